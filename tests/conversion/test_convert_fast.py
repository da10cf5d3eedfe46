"""Conversion of π0-FAST checkpoints (the PaliGemma tree alone) into the PyTorch model's state dict."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy

from openpi.conversion.rules import convert_fast_params
from openpi.models.fast_reference_fixture import FastReferenceFixture
from openpi.models.param_layout import CheckpointMismatchError
from openpi.models_pytorch.pi0_fast_pytorch import Pi0FastPytorch


@pytest.fixture(scope="module")
def fixture(reference_root) -> FastReferenceFixture:
    return FastReferenceFixture.load(reference_root / "pi0_fast_tiny")


@pytest.fixture(scope="module")
def flat(fixture) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(fixture.directory / "pi0_fast_tiny_params.safetensors")


def test_every_leaf_becomes_the_models_tensors(fixture, flat):
    state = dict(convert_fast_params(flat, fixture.config))
    expected = Pi0FastPytorch(fixture.config).state_dict()
    assert state.keys() == expected.keys()
    assert all(tuple(state[k].shape) == tuple(v.shape) for k, v in expected.items())
    # The patch kernel goes HWIO -> OIHW; q heads are flattened head-major.
    np.testing.assert_array_equal(
        state["paligemma.model.vision_tower.vision_model.embeddings.patch_embedding.weight"],
        flat["PaliGemma/img/embedding/kernel"].transpose(3, 2, 0, 1),
    )


def test_bfloat16_export_keeps_norms_in_float32(fixture, flat):
    state = dict(convert_fast_params(flat, fixture.config, "bfloat16"))
    assert state["paligemma.model.language_model.norm.weight"].dtype == np.float32
    assert state["paligemma.model.language_model.embed_tokens.weight"].dtype != np.float32


def test_a_pi0_tree_is_refused_naming_the_action_expert(fixture, flat):
    tree = dict(flat) | {"PaliGemma/llm/final_norm_1/scale": np.zeros(64, np.float32)}
    with pytest.raises(CheckpointMismatchError, match="unknown parameter PaliGemma/llm/final_norm_1/scale"):
        list(convert_fast_params(tree, fixture.config))


def test_a_misshapen_leaf_is_refused(fixture, flat):
    tree = dict(flat) | {"PaliGemma/llm/embedder/input_embedding": np.zeros((512, 64), np.float32)}
    with pytest.raises(
        CheckpointMismatchError, match="input_embedding is \\[512, 64\\], config expects \\[1024, 64\\]"
    ):
        list(convert_fast_params(tree, fixture.config))


def test_a_checkpoint_folder_converts_and_loads_strictly(fixture, tmp_path):
    from openpi.conversion import convert
    from openpi.models_pytorch import weights

    convert.convert_checkpoint(fixture.checkpoint_dir, fixture.config, tmp_path / "out", "float32")
    model = Pi0FastPytorch(fixture.config)
    weights.load_weights(model, tmp_path / "out")
    expected = dict(convert.convert_fast_params_dir(fixture.checkpoint_dir, fixture.config))
    for key, tensor in model.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), expected[key])
