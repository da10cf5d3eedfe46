"""LightVLA pruning inside PI0Pytorch: positions, masks, KV cache size, runtime budgets and telemetry."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from openpi.models.pi0_config import tiny_config
from openpi.models.reference_fixture import TOLERANCE, ReferenceFixture, relative_error
from openpi.models_pytorch import reference
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.weights import load_weights


@pytest.fixture(scope="module", params=["pi05_tiny", "pi0_tiny"])
def fixture(request, reference_root) -> ReferenceFixture:
    return ReferenceFixture.load(reference_root / request.param)


def _pruned_model(fixture: ReferenceFixture, **pruning) -> PI0Pytorch:
    model = PI0Pytorch(dataclasses.replace(fixture.config, token_pruning_enabled=True, **pruning))
    load_weights(model, fixture.weights_file)
    return model.eval()


def test_keeping_every_patch_reproduces_the_unpruned_model(fixture):
    """With keep_ratio=1.0 only padding is dropped: positions and masks must leave the outputs unchanged."""
    model = _pruned_model(fixture, token_prune_keep_ratio=1.0)
    io = reference.tensors(fixture)
    actions = model.sample_actions(reference.observation(fixture), noise=io["input.sample_noise"])
    assert relative_error(actions, io["output.sampled_actions"]) <= TOLERANCE


def test_budget_of_ten_percent_shrinks_the_kv_cache(fixture):
    obs = reference.observation(fixture)
    valid = torch.stack([m for m in obs.image_masks.values()], 1).sum(1) * 256
    unpruned = reference.build_model(fixture).encode_prefix(obs)
    pruned = _pruned_model(fixture, token_prune_keep_ratio=0.1).encode_prefix(obs)

    text = obs.tokenized_prompt.shape[1]
    kept = pruned.pad_masks[:, :-text].sum(1)
    assert kept.tolist() == [math.ceil(0.1 * int(v)) for v in valid]
    assert pruned.kv_cache[0][0].shape[2] == int(kept.max()) + text
    image_fraction = (pruned.num_bytes / unpruned.num_bytes * (768 + text) - text) / 768
    assert 0.05 < image_fraction < 0.15


def test_batch_with_different_kept_counts_equals_per_sample_runs(fixture):
    """Implicit (argmax-union) selection keeps a different count per sample; padding to the batch max is invisible."""
    model = _pruned_model(fixture)
    obs, noise = reference.observation(fixture), reference.tensors(fixture)["input.sample_noise"]
    prefix = model.encode_prefix(obs)
    text = obs.tokenized_prompt.shape[1]
    counts = prefix.pad_masks[:, :-text].sum(1)
    assert counts[0] != counts[1] and prefix.pad_masks.shape[1] < 768 + text
    batched = model.sample_actions(obs, noise=noise)
    for i in range(2):
        alone = model.sample_actions(obs.select(slice(i, i + 1)), noise=noise[i : i + 1])
        assert relative_error(batched[i : i + 1], alone) < 1e-4


@pytest.mark.parametrize("dedup", [False, True])
def test_training_forward_selects_voted_patches_and_trains_the_vision_tower(fixture, dedup):
    model = _pruned_model(fixture, token_prune_noise_scale=0.5, token_prune_dedup_training=dedup).train()
    obs, io = reference.observation(fixture), reference.tensors(fixture)
    images = list(obs.images.values())
    masks = [obs.image_masks[n] for n in obs.images]
    prefix = model.embed_prefix(images, masks, obs.tokenized_prompt, obs.tokenized_prompt_mask)
    text = obs.tokenized_prompt.shape[1]
    if dedup:  # one token per voted patch, its logit raised by log(votes)
        patch_positions = prefix.positions[1, :-text][prefix.pad_masks[1, :-text]]
        assert patch_positions.unique().numel() == patch_positions.numel() < 768
        assert prefix.key_bias is not None and prefix.key_bias[:, :-text].max() > 0
    else:  # rows take the positions of the patches they selected, so some positions repeat
        assert prefix.embs.shape[1] == 768 + text and prefix.key_bias is None
        assert prefix.positions[1, :768].unique().numel() < 768
    loss = model(obs, io["input.actions"], io["input.noise"], io["input.time"]).mean()
    loss.backward()
    patch_embedding = model.paligemma_with_expert.paligemma.model.vision_tower.vision_model.embeddings.patch_embedding
    assert patch_embedding.weight.grad.abs().sum() > 0


def test_budget_training_trains_on_the_served_prefix_and_the_loss_reaches_the_gate(fixture):
    model = _pruned_model(fixture, token_prune_keep_ratio=0.1, token_prune_budget_training=True)
    model.set_token_pruner_noise_scale(0.0)
    obs, io = reference.observation(fixture), reference.tensors(fixture)
    images, masks = list(obs.images.values()), [obs.image_masks[n] for n in obs.images]
    args = (images, masks, obs.tokenized_prompt, obs.tokenized_prompt_mask)
    served = model.eval().embed_prefix(*args)
    trained = model.train().embed_prefix(*args)
    for name in ("embs", "pad_masks", "positions"):
        assert torch.equal(getattr(trained, name), getattr(served, name)), name
    assert served.key_bias is None and torch.equal(trained.key_bias, torch.zeros_like(trained.key_bias))

    gates = []
    model.pruner.register_forward_hook(lambda _module, _inputs, out: gates.append(out.key_bias))
    model.set_token_pruner_noise_scale(0.5)
    loss = model(obs, io["input.actions"], io["input.noise"], io["input.time"]).mean()
    gates[0].retain_grad()
    loss.backward()
    assert gates[0].grad[gates[0].grad != 0].numel() > 0, "the loss must say which kept patches it wants more of"


def test_budget_training_needs_a_budget_only_while_pruning():
    with pytest.raises(ValueError, match="token_prune_budget_training"):
        tiny_config(token_pruning_enabled=True, token_prune_budget_training=True)
    # `--model.token_pruning_enabled False` on a *_lightvla config leaves its budget options inert.
    assert not tiny_config(token_pruning_enabled=False, token_prune_budget_training=True).token_pruning_enabled


def test_runtime_setters_and_telemetry(fixture):
    model = _pruned_model(fixture, token_prune_keep_tokens=32)
    model.set_token_pruner_keep_tokens(8)
    model.set_token_pruner_collect_stats(True)
    model.encode_prefix(reference.observation(fixture))
    stats = model.get_token_pruning_stats()
    assert stats["kept_tokens_overall_max"] == 8
    expected = {"kept_ratio_overall_mean", "argmax_union_mean", "queries_std_mean", "score_top1_gap_det_mean"}
    assert expected <= set(stats)
    model.set_token_pruner_keep_tokens(None)
    assert model.token_pruner.keep_tokens == 32
    model.set_token_pruner_noise_scale(0.25)
    assert model.get_token_pruning_stats()["noise_scale"] == 0.25
    model.set_token_pruner_noise_scale(None)
    assert model.token_pruner.noise_scale == fixture.config.token_prune_noise_scale


def test_setters_on_an_unpruned_model_are_errors(fixture):
    model = PI0Pytorch(fixture.config)
    assert model.get_token_pruning_stats() == {}
    with pytest.raises(RuntimeError, match="token_pruning_enabled"):
        model.set_token_pruner_keep_ratio(0.5)
