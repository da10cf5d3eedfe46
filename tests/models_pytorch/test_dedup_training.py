"""Deduplicated pruned training (``token_prune_dedup_training``) computes exactly what the full-length prefix does.

Rows of the training prefix that voted for the same patch are the same token at the same position; the model runs
each once with its attention logit raised by log(votes). These tests compare loss, every parameter gradient, the
gradient into the pruner's scores, and a 30-step training run against the full-length prefix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from openpi.models.observation import random_observation
from openpi.models.pi0_config import tiny_config
from openpi.models.reference_fixture import relative_error
from openpi.models_pytorch import token_pruner
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.training import optimizer, trainer
from tests.helpers.models import randomized
from tests.helpers.training import pruned_fake_data_config, state_dict_copy

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOLERANCE = 1e-5
# A single tensor's float32 rounding: the language model's query/key projection gradients sum cancelling terms and
# land at 0.6-1.1e-5 over selection seeds; SigLIP's key-bias gradients are zero in exact arithmetic (softmax is
# shift-invariant) and float noise (~1e-9) here, hence the floor of 1e-3 on the norm.
PER_TENSOR_TOLERANCE = 3e-5
NUM_PATCHES = 3 * 64  # three cameras at 112 px


def _observation(config):
    """Three samples: different prompt lengths, the second without its right wrist camera."""
    obs = random_observation(config, batch_size=3, seed=1)
    obs.image_masks["right_wrist_0_rgb"][1] = False
    valid = torch.tensor([9, 30, 4])
    return dataclasses.replace(obs, tokenized_prompt_mask=torch.arange(32)[None] < valid[:, None])


def _loss_and_gradients(
    config, dedup: bool, monkeypatch: pytest.MonkeyPatch, checkpointing: bool = False, bf16: bool = False
) -> dict[str, torch.Tensor]:
    """Loss, parameter gradients, the scores' gradient and the pruner's output for one forward/backward
    (optionally with gradient checkpointing, or under bfloat16 autocast as ``pytorch_training_precision="mixed"``)."""
    model = randomized(PI0Pytorch(dataclasses.replace(config, token_prune_dedup_training=dedup))).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    scores: list[torch.Tensor] = []
    outputs: list[token_pruner.PrunedPatches] = []
    score = token_pruner._score

    def keep_scores(*args):
        scoring = score(*args)
        scoring.scores.retain_grad()
        scores.append(scoring.scores)
        return scoring

    monkeypatch.setattr(token_pruner, "_score", keep_scores)
    model.token_pruner.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    obs = _observation(config)
    gen = torch.Generator().manual_seed(2)
    actions = torch.randn(3, config.action_horizon, config.action_dim, generator=gen)
    noise = torch.randn(actions.shape, generator=gen)
    weights = torch.rand(actions.shape, generator=gen)  # every output element matters differently
    torch.manual_seed(0)  # the pruner's selection noise
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(obs, actions, noise=noise, time=torch.tensor([0.9, 0.5, 0.1]))
    (loss * weights).sum().backward()
    grads = {f"param:{name}": p.grad for name, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss.detach(), "scores": scores[0].grad, **grads, "pruned": outputs[0]}


def _config(pi05: bool = True):
    return tiny_config(
        pi05=pi05,
        vision_variant="tiny_112",
        action_horizon=4,
        max_token_len=32,
        token_pruning_enabled=True,
        token_prune_noise_scale=0.3,
    )


@pytest.mark.parametrize("pi05", [True, False], ids=["pi05", "pi0"])
def test_dedup_gives_the_loss_and_every_gradient_of_the_full_prefix(pi05: bool, monkeypatch: pytest.MonkeyPatch):
    config = _config(pi05)
    full = _loss_and_gradients(config, dedup=False, monkeypatch=monkeypatch)
    dedup = _loss_and_gradients(config, dedup=True, monkeypatch=monkeypatch)

    pruned = dedup.pop("pruned")
    unique_per_sample = pruned.mask.sum(dim=1).tolist()
    assert len(set(unique_per_sample)) == 3 and max(unique_per_sample) < NUM_PATCHES // 2, unique_per_sample
    assert pruned.counts.sum(dim=1).tolist() == [NUM_PATCHES, NUM_PATCHES - 64, NUM_PATCHES]
    assert full.pop("pruned").tokens.shape[1] == NUM_PATCHES

    assert full.keys() == dedup.keys()
    assert any(key.startswith("param:paligemma_with_expert.paligemma.model.vision_tower") for key in full)
    assert relative_error(dedup["loss"], full["loss"]) <= TOLERANCE
    assert relative_error(dedup["scores"], full["scores"]) <= TOLERANCE
    params = [key for key in full if key.startswith("param:")]
    flat = {name: torch.cat([g[key].flatten() for key in params]) for name, g in (("full", full), ("dedup", dedup))}
    assert relative_error(flat["dedup"], flat["full"]) <= TOLERANCE
    for key in params:
        assert _error(dedup[key], full[key], floor=1e-3) <= PER_TENSOR_TOLERANCE, key


def test_dedup_with_gradient_checkpointing_and_bf16_autocast(monkeypatch: pytest.MonkeyPatch):
    config = _config()
    plain = _loss_and_gradients(config, dedup=True, monkeypatch=monkeypatch)
    checkpointed = _loss_and_gradients(config, dedup=True, monkeypatch=monkeypatch, checkpointing=True)
    for key in (
        "loss",
        "scores",
        "param:action_out_proj.weight",
        "param:paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight",
    ):
        assert _error(checkpointed[key], plain[key]) <= 1e-6, key
    # bf16 rounds differently with k copies of a key than with one key and log(k): equal to bf16 precision only.
    full_bf16 = _loss_and_gradients(config, dedup=False, monkeypatch=monkeypatch, bf16=True)
    dedup_bf16 = _loss_and_gradients(config, dedup=True, monkeypatch=monkeypatch, bf16=True)
    assert _error(dedup_bf16["loss"], full_bf16["loss"]) <= 2e-2
    assert _error(dedup_bf16["loss"], plain["loss"]) <= 2e-2


def test_dedup_prefix_is_shorter_and_logged(tmp_path: Path):
    config = pruned_fake_data_config(tmp_path, num_train_steps=2, save_interval=2)
    result = trainer.train(config)
    prefix_lengths = [entry["prune/train_prefix_tokens_mean"] for entry in result.history]
    assert all(length < 2 * 16 + config.model.max_token_len for length in prefix_lengths), prefix_lengths


def test_thirty_training_steps_give_the_same_weights(tmp_path: Path):
    weights = {}
    for dedup in (False, True):
        config = pruned_fake_data_config(
            tmp_path / str(dedup),
            num_train_steps=30,
            save_interval=30,
            log_interval=10,
            lr_schedule=optimizer.CosineDecaySchedule(warmup_steps=5, peak_lr=1e-3, decay_steps=30, decay_lr=1e-4),
        )
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, token_prune_dedup_training=dedup))
        weights[dedup] = state_dict_copy(trainer.train(config).model)
    torch.manual_seed(config.seed)
    initial = PI0Pytorch(config.model).state_dict()
    moved = {key: _error(full, initial[key]) for key, full in weights[False].items()}
    assert max(moved.values()) > 0.01, "training did not move the weights"
    for key, full in weights[False].items():
        assert _error(weights[True][key], full) <= TOLERANCE, (key, moved[key])


def _error(value: torch.Tensor, expected: torch.Tensor, floor: float = 1e-6) -> float:
    """Norm-wise relative error; ``floor`` bounds the denominator for tensors that are (near) zero."""
    difference = torch.linalg.vector_norm((value - expected).double())
    return float(difference / torch.linalg.vector_norm(expected.double()).clamp(min=floor))


def test_merged_patches_are_the_voted_patches_padded_to_the_bucket():
    config = tiny_config(
        token_pruning_enabled=True,
        token_prune_noise_scale=0.5,
        token_prune_kept_multiple=16,
        token_prune_dedup_training=True,
    )
    pruner = token_pruner.ImageTokenPruner(config).train()
    gen = torch.Generator().manual_seed(0)
    patches, task = torch.randn(2, 40, 8, generator=gen), torch.randn(2, 3, 8, generator=gen)
    patch_mask = torch.ones(2, 40, dtype=torch.bool)
    patch_mask[1, 20:] = False  # an absent camera
    positions = torch.arange(40).expand(2, -1)
    out = pruner(patches, task, torch.ones(2, 3, dtype=torch.bool), patch_mask, positions)
    assert out.tokens.shape[1] % 16 == 0
    for b in range(2):
        kept = out.kept_indices[b][out.mask[b]]
        assert kept.unique().numel() == kept.numel() and bool(patch_mask[b, kept].all())
        torch.testing.assert_close(out.tokens[b][out.mask[b]], patches[b, kept])
        assert out.positions[b][out.mask[b]].tolist() == kept.tolist()
    assert out.counts.sum(dim=1).tolist() == [40, 20] and int(out.counts[~out.mask].abs().sum()) == 0
