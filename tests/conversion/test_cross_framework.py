"""One checkpoint, two frameworks: the JAX model (restoring the orbax tree) and the PyTorch model (through the
converter) agree with LightVLA pruning on, in eval mode (kept sets, prefix lengths, telemetry, sampled actions) and
in training with the same noise injected (losses; budget training's gradients)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch

from openpi.conversion import convert
from openpi.models.observation import random_observation
from openpi.models.reference_fixture import ReferenceFixture, relative_error
from openpi.models_jax import reference as jax_reference
from openpi.models_jax.observation import JaxObservation
from openpi.models_jax.pi0 import Pi0, compute_loss_fn
from openpi.models_pytorch import reference
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from tests.helpers.conversion import odd_config, random_params, write_orbax

TOLERANCE = 2e-3
BUDGETS = [
    {},
    {"token_prune_keep_ratio": 0.25},
    {"token_prune_keep_tokens": 40},
]
TELEMETRY = ("kept_tokens_overall_mean", "argmax_union_mean", "argmax_top1_share_mean", "query_cosine_after_norm_mean")


@pytest.fixture(scope="module", params=["jax_pi05_tiny", "jax_pi0_tiny"])
def fixture(request, reference_root) -> ReferenceFixture:
    return ReferenceFixture.load(reference_root / request.param)


def _models(fixture: ReferenceFixture, **pruning) -> tuple[PI0Pytorch, Pi0]:
    config = dataclasses.replace(fixture.config, token_pruning_enabled=True, token_prune_kept_multiple=16, **pruning)
    torch_model = PI0Pytorch(config)
    state = convert.convert_params_dir(fixture.checkpoint_dir, config)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return torch_model.eval(), Pi0.from_checkpoint(fixture.checkpoint_dir, config)


@pytest.mark.parametrize("budget", BUDGETS, ids=["union", "ratio25", "tokens40"])
def test_eval_kept_sets_prefix_lengths_and_actions_agree(fixture, budget):
    torch_model, jax_model = _models(fixture, **budget)
    obs, noise = reference.observation(fixture), reference.tensors(fixture)["input.sample_noise"]
    torch_model.set_token_pruner_collect_stats(True)
    jax_model.collect_stats = True
    with torch.no_grad():
        torch_actions = torch_model.sample_actions(obs, noise=noise)
        torch_prefix = torch_model.encode_prefix(obs).pad_masks.sum(dim=1).tolist()  # valid tokens per sample
    jax_obs = jax_reference.observation(fixture)
    sampled = jax_model.sample(jax.random.key(0), jax_obs, noise=noise.numpy())
    jax_actions, keep = sampled.actions, sampled.keep

    selection = torch_model.pruner.last_selection
    np.testing.assert_array_equal(np.asarray(sampled.votes), selection.votes.numpy())
    for b in range(obs.batch_size):
        torch_kept = set(selection.kept_indices[b][selection.mask[b]].tolist())
        assert torch_kept == set(np.flatnonzero(np.asarray(keep[b])).tolist())
    prompt = jax_obs.tokenized_prompt_mask.sum(axis=1)
    assert (np.asarray(keep).sum(axis=1) + prompt).tolist() == torch_prefix
    # Padded lengths: both frameworks pad a union to a multiple of 16; JAX gives a budget exactly its K slots.
    assert sampled.prefix_length <= torch_model.encode_prefix(obs).pad_masks.shape[1]
    assert relative_error(jax_actions, torch_actions) < TOLERANCE
    torch_stats = torch_model.get_token_pruning_stats()
    for key in TELEMETRY:
        assert jax_model.last_stats[key] == pytest.approx(torch_stats[key], rel=1e-4, abs=1e-5), key


BUDGET_TRAINING = {"token_prune_budget_training": True, "token_prune_keep_ratio": 0.25}
GATED_BUDGET_TRAINING = {**BUDGET_TRAINING, "token_prune_gate_dropped_patches": True}


def _uniform(fixture: ReferenceFixture) -> torch.Tensor:
    """One draw of the pruner's training noise ``[B, N, N]``, replayed in both frameworks."""
    obs = reference.observation(fixture)
    num_patches = sum(1 for _ in obs.images) * fixture.config.vision_config.num_patches
    return torch.rand(obs.batch_size, num_patches, num_patches, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "training",
    [{}, BUDGET_TRAINING, GATED_BUDGET_TRAINING],
    ids=["votes", "budget25", "budget25_gated"],
)
@pytest.mark.parametrize("noise_scale", [0.0, 1.0])
def test_training_losses_agree_with_the_same_noise(fixture, noise_scale, training):
    torch_model, jax_model = _models(fixture, token_prune_noise_scale=noise_scale, **training)
    obs, io = reference.observation(fixture), reference.tensors(fixture)
    uniform = _uniform(fixture)
    torch_model.train()
    torch_model.set_token_pruner_collect_stats(True)
    with torch.no_grad():
        torch_loss = torch_model(obs, io["input.actions"], io["input.noise"], io["input.time"], prune_uniform=uniform)
    jax_model.collect_stats = True
    jax_loss = jax_model.compute_loss(
        jax.random.key(0),
        jax_reference.observation(fixture),
        io["input.actions"].numpy(),
        train=True,
        noise=io["input.noise"].numpy(),
        time=io["input.time"].numpy(),
        prune_uniform=uniform.numpy(),
    )
    assert relative_error(jax_loss, torch_loss) < TOLERANCE
    torch_stats = torch_model.get_token_pruning_stats()
    assert jax_model.last_stats["argmax_union_mean_noisy"] == torch_stats["argmax_union_mean_noisy"]
    assert jax_model.last_stats["kept_tokens_overall_mean"] == torch_stats["kept_tokens_overall_mean"]


@pytest.mark.parametrize(
    "training",
    [BUDGET_TRAINING, GATED_BUDGET_TRAINING],
    ids=["budget25", "budget25_gated"],
)
def test_budget_training_gradients_agree(fixture, training):
    """The gradient of the budget-trained loss into the prompt's embeddings: besides the prefix's own path, the
    kept (gated: and dropped) patches' straight-through gate carries the policy's attention back into the pruner's
    scores, whose queries are made from the prompt (without the gate the two frameworks' gradients differ)."""
    torch_model, jax_model = _models(fixture, token_prune_noise_scale=0.5, **training)
    obs, io = reference.observation(fixture), reference.tensors(fixture)
    uniform = _uniform(fixture)
    torch_model.train()
    torch_model(obs, io["input.actions"], io["input.noise"], io["input.time"], prune_uniform=uniform).mean().backward()
    torch_grad = torch_model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight.grad

    def loss(params):
        value, _ = compute_loss_fn(
            params,
            jax_reference.observation(fixture).trim_prompt_padding(fixture.config.prompt_trim_multiple),
            io["input.actions"].numpy(),
            io["input.noise"].numpy(),
            io["input.time"].numpy(),
            uniform.numpy(),
            0.5,
            config=jax_model.config,
            train=True,
            prune=jax_model.prune_settings(),
        )
        return value.mean()

    jax_grad = jax.grad(loss)(jax_model.params())["PaliGemma"]["llm"]["embedder"]["input_embedding"]
    assert torch_grad.abs().max() > 0
    assert relative_error(jax_grad, torch_grad) < TOLERANCE


@pytest.mark.parametrize("pi05", [True, False])
def test_odd_dimensions_agree(pi05, tmp_path):
    """Every axis a distinct size, grouped-query attention (2 kv heads) and heads × head_dim ≠ width: an axis
    mix-up in either model or in the converter shows here, where the fixtures' square dimensions could hide it."""
    config = dataclasses.replace(odd_config(pi05), token_pruning_enabled=True, token_prune_keep_ratio=0.5)
    flat = {path: 0.3 * leaf for path, leaf in random_params(config, seed=4).items()}
    checkpoint = write_orbax(tmp_path / "ckpt", flat)
    torch_model = PI0Pytorch(config)
    state = convert.convert_params_dir(checkpoint / "params", config)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    jax_model = Pi0.from_checkpoint(checkpoint, config)
    obs = random_observation(config, 3, num_cameras=2, valid_prompt_tokens=5, seed=2)
    obs.image_masks["left_wrist_0_rgb"][0] = False
    noise = torch.randn(3, config.action_horizon, config.action_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch_actions = torch_model.eval().sample_actions(obs, noise=noise)
        torch_loss = torch_model(obs, noise * 0.5, noise, torch.tensor([0.2, 0.5, 0.9]))
    jax_obs = JaxObservation.from_dict(obs.to_dict())
    jax_actions = jax_model.sample_actions(jax.random.key(0), jax_obs, noise=noise.numpy())
    jax_loss = jax_model.compute_loss(
        jax.random.key(0), jax_obs, noise.numpy() * 0.5, noise=noise.numpy(), time=np.array([0.2, 0.5, 0.9])
    )
    assert relative_error(jax_actions, torch_actions) < TOLERANCE
    assert relative_error(jax_loss, torch_loss) < TOLERANCE
