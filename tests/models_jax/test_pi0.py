"""The JAX π0 / π0.5 computes what the published JAX model computes, restores published trees strictly, and its
parameter tree is the published layout."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from openpi.conversion import convert
from openpi.models.observation import random_observation
from openpi.models.orbax_params import flatten_params
from openpi.models.param_layout import CheckpointMismatchError, lora_shapes, published_shapes
from openpi.models.pi0_config import Pi0Config, tiny_config
from openpi.models.reference_fixture import ReferenceFixture, passes, relative_error
from openpi.models_jax import params as jax_params
from openpi.models_jax import reference as jax_reference
from openpi.models_jax.lora import merge_lora
from openpi.models_jax.observation import JaxObservation
from openpi.models_jax.pi0 import Pi0, compute_loss_fn, prefix_cache_fn
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.weights import load_weights
from tests.helpers.conversion import write_orbax
from tests.helpers.models import LORA_EXPERT, LORA_LLM

FIXTURES = ["jax_pi05_tiny", "jax_pi0_tiny"]
BF16_TOLERANCE = 5e-2


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request, reference_root) -> ReferenceFixture:
    return ReferenceFixture.load(reference_root / request.param)


@pytest.fixture(scope="module")
def model(fixture) -> Pi0:
    return jax_reference.build_model(fixture)


def test_matches_reference_outputs(model, fixture):
    errors = jax_reference.compare(model, fixture)
    assert passes(errors), errors


def test_parameter_tree_is_the_checkpoint_tree(model, fixture):
    shapes = {path: tuple(leaf.shape) for path, leaf in flatten_params(model.params()).items()}
    assert shapes == {path: tuple(shape) for path, shape in fixture.raw_config["param_shapes"].items()}


@pytest.mark.parametrize("name", ["pi05", "pi0"])
def test_full_size_tree_is_the_published_layout(name: str, layouts_root: Path):
    config = Pi0Config(pi05=name == "pi05")
    published = json.loads((layouts_root / "reference_jax_params.json").read_text())[name]
    abstract = jax.eval_shape(lambda: jax_params.init_params(config))  # no 3B allocation
    ours = {path: [list(leaf.shape), str(leaf.dtype)] for path, leaf in flatten_params(abstract).items()}
    assert ours == published


def _sample(model: Pi0, obs: JaxObservation, noise: np.ndarray) -> np.ndarray:
    return np.asarray(model.sample_actions(jax.random.key(0), obs, noise=noise))


def test_padding_and_absent_cameras_are_invisible_and_images_are_seen(model, fixture):
    obs, noise = jax_reference.observation(fixture), fixture.io["input.sample_noise"]
    before = _sample(model, obs, noise)
    camera = next(name for name, mask in obs.image_masks.items() if not mask.all())
    sample = int(np.flatnonzero(~obs.image_masks[camera])[0])
    images = {k: np.array(v) for k, v in obs.images.items()}
    images[camera][sample] = np.random.default_rng(0).uniform(-1, 1, images[camera][sample].shape)
    tokens = np.array(obs.tokenized_prompt)
    tokens[sample, int(obs.tokenized_prompt_mask[sample].sum())] = 7
    after = _sample(model, obs.replace(images=images, tokenized_prompt=tokens), noise)
    assert relative_error(after[sample], before[sample]) < 1e-5

    seen = {k: np.array(v) for k, v in obs.images.items()}
    seen["base_0_rgb"][1] = -seen["base_0_rgb"][1]
    assert relative_error(_sample(model, obs.replace(images=seen), noise)[1], before[1]) > 1e-2


def test_bfloat16_sampling_agrees_with_float32(model, fixture):
    bf16 = Pi0(dataclasses.replace(fixture.config, dtype="bfloat16"), model.params())
    obs, noise = jax_reference.observation(fixture), fixture.io["input.sample_noise"]
    actions = bf16.sample_actions(jax.random.key(0), obs, noise=noise)
    assert actions.dtype == np.float32
    assert 0 < relative_error(actions, _sample(model, obs, noise)) < BF16_TOLERANCE


def test_value_wrapped_checkpoint_restores_like_a_plain_one(tmp_path: Path):
    config = tiny_config(vision_variant="hidden_size=8,num_hidden_layers=1,num_attention_heads=2,intermediate_size=8")
    flat = flatten_params(jax.tree.map(np.asarray, jax_params.init_params(config, seed=3)))
    plain = Pi0.from_checkpoint(write_orbax(tmp_path / "plain", flat), config)
    wrapped = Pi0.from_checkpoint(write_orbax(tmp_path / "wrapped", flat, value_wrapped=True), config)
    for path, leaf in flatten_params(wrapped.params()).items():
        np.testing.assert_array_equal(leaf, flat[path])
        np.testing.assert_array_equal(flatten_params(plain.params())[path], flat[path])


def test_strict_restore_names_every_unknown_missing_and_misshapen_path(tmp_path: Path):
    config = tiny_config(vision_variant="hidden_size=8,num_hidden_layers=1,num_attention_heads=2,intermediate_size=8")
    flat = {path: np.zeros(shape, np.float32) for path, shape in published_shapes(config).items()}
    flat["PaliGemma/llm/extra_head/kernel"] = np.zeros((2, 2), np.float32)
    del flat["action_out_proj/bias"]
    flat["time_mlp_in/kernel"] = np.zeros((64, 32), np.float32)
    with pytest.raises(CheckpointMismatchError) as error:
        Pi0.from_checkpoint(write_orbax(tmp_path / "bad", flat), config)
    message = str(error.value)
    assert "unknown parameter PaliGemma/llm/extra_head/kernel" in message
    assert "missing parameter action_out_proj/bias" in message
    assert "shape of time_mlp_in/kernel is [64, 32]" in message


def test_training_loss_passes_gradient_through_the_pruner_to_vision():
    # π0: at initialisation π0.5's adaRMS gates are zero, so no gradient reaches the prefix before the first step.
    config = tiny_config(pi05=False, token_pruning_enabled=True)
    model = Pi0(config, seed=1)
    obs = JaxObservation.from_dict(random_observation(config, 2, valid_prompt_tokens=9).to_dict())
    actions = np.random.default_rng(0).standard_normal((2, config.action_horizon, config.action_dim), np.float32)
    num_patches = len(obs.images) * config.vision_config.num_patches

    def loss(params):
        value, _ = compute_loss_fn(
            params,
            obs,
            actions,
            np.zeros_like(actions),
            np.full((2,), 0.5, np.float32),
            np.random.default_rng(1).uniform(size=(2, num_patches, num_patches)).astype(np.float32),
            1.0,
            config=config,
            train=True,
            prune=model.prune_settings(),
        )
        return value.mean()

    norms = {path: float(np.linalg.norm(g)) for path, g in flatten_params(jax.grad(loss)(model.params())).items()}
    assert all(np.isfinite(v) for v in norms.values())
    assert norms["PaliGemma/img/embedding/kernel"] > 0


def _varied_observations(config: Pi0Config, count: int) -> list[JaxObservation]:
    """Different images, prompt lengths (1–40 valid tokens of 48) and, every third, an absent wrist camera."""
    observations = []
    for i in range(count):
        obs = random_observation(config, 2, valid_prompt_tokens=1 + (i * 7) % 40, seed=i)
        if i % 3 == 0:
            obs.image_masks["left_wrist_0_rgb"][1] = False
        observations.append(JaxObservation.from_dict(obs.to_dict()))
    return observations


@pytest.mark.parametrize("keep_ratio", [0.1, None], ids=["budget10", "union"])
def test_pruned_inference_shortens_the_cache_and_compiles_once_per_shape_bucket(keep_ratio):
    config = tiny_config(token_pruning_enabled=True, token_prune_keep_ratio=keep_ratio, max_token_len=48)
    model = Pi0(config, seed=0)
    observations = _varied_observations(config, 20)
    num_patches = 3 * config.vision_config.num_patches
    prefix_cache_fn.clear_cache()
    buckets = set()
    for obs in observations:
        prefix, cache = model.encode_prefix(obs)
        length = prefix.mask.shape[1]
        prompt = obs.trim_prompt_padding(config.prompt_trim_multiple).tokenized_prompt.shape[1]
        assert cache.keys.shape == (config.llm_config.depth, 2, length, 1, config.llm_config.head_dim)
        if keep_ratio is not None:
            assert length == math.ceil(keep_ratio * num_patches) + prompt  # 77 patch slots instead of 768
        else:
            assert (length - prompt) % 16 == 0 and length - prompt < num_patches
        buckets.add((prompt, length - prompt))
        model.sample_actions(jax.random.key(0), obs, num_steps=2)
    assert prefix_cache_fn._cache_size() == len(buckets)  # one compilation per (prompt, kept) bucket
    assert len(buckets) <= 3 if keep_ratio is not None else len(buckets) <= 3 * num_patches // 16


def test_lora_adapters_change_the_model_and_merge_into_the_base_variant(tmp_path: Path):
    # π0: π0.5's zero-initialised adaRMS gates would hide the expert's adapters at initialisation.
    base_config = tiny_config(pi05=False)
    lora_config = dataclasses.replace(base_config, paligemma_variant=LORA_LLM, action_expert_variant=LORA_EXPERT)
    model = Pi0(lora_config, seed=2)
    flat = flatten_params(model.params())
    adapters = {path for path in flat if "lora_" in path}
    assert adapters == set(lora_shapes(lora_config)) and len(adapters) == 20
    assert flat["PaliGemma/llm/layers/attn/attn_vec_einsum_1/lora_b"].shape == (4, 8, 2, 64)

    base = Pi0(base_config, jax_params.nest({p: v for p, v in flat.items() if p not in adapters}))
    merged = Pi0(base_config, merge_lora(model.params(), lora_config))
    torch_obs = random_observation(base_config, 2, valid_prompt_tokens=7)
    obs = JaxObservation.from_dict(torch_obs.to_dict())
    noise = np.random.default_rng(0).standard_normal((2, base_config.action_horizon, 32)).astype(np.float32)
    adapted = _sample(model, obs, noise)
    assert relative_error(_sample(base, obs, noise), adapted) > 1e-3  # the adapters do something
    assert relative_error(_sample(merged, obs, noise), adapted) < 1e-5

    # The converter folds the adapters in: the PyTorch base model samples the adapted model's actions.
    lora_checkpoint = write_orbax(tmp_path / "lora", {p: np.asarray(v) for p, v in flat.items()})
    weights_file = convert.convert_checkpoint(lora_checkpoint, lora_config, tmp_path / "converted", "float32")
    torch_model = PI0Pytorch(base_config)
    load_weights(torch_model, weights_file)
    with torch.no_grad():
        torch_actions = torch_model.eval().sample_actions(torch_obs, noise=torch.from_numpy(noise)).numpy()
    assert relative_error(torch_actions, adapted) < 2e-3

    # A base checkpoint loads into the LoRA variant with fresh adapters; a partial set of adapters is refused.
    checkpoint = write_orbax(tmp_path / "base", {p: np.asarray(v) for p, v in flatten_params(base.params()).items()})
    restored = flatten_params(Pi0.from_checkpoint(checkpoint, lora_config).params())
    assert adapters <= set(restored)
    partial = {**{p: np.asarray(v) for p, v in flat.items()}}
    del partial["PaliGemma/llm/layers/mlp/linear_lora_b"]
    with pytest.raises(CheckpointMismatchError, match="LoRA adapters are incomplete"):
        Pi0.from_checkpoint(write_orbax(tmp_path / "partial", partial), lora_config)
