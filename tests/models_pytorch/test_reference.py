"""Our π0 / π0.5 computes what the published implementation computes (shared/reference fixtures)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from openpi.models.observation import Observation
from openpi.models.reference_fixture import TOLERANCE, ReferenceFixture, passes, relative_error
from openpi.models_pytorch import reference
from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
from openpi.models_pytorch.weights import load_weights
from tests.helpers import REPO_ROOT

FIXTURES = ["pi05_tiny", "pi0_tiny"]
# bfloat16 keeps ~3 significant digits; over 4 layers and 10 Euler steps the relative error is ~1.5e-2.
BF16_TOLERANCE = 5e-2


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request, reference_root) -> ReferenceFixture:
    return ReferenceFixture.load(reference_root / request.param)


@pytest.fixture(scope="module")
def model(fixture) -> PI0Pytorch:
    return reference.build_model(fixture)


def test_matches_reference_outputs(model, fixture):
    errors = reference.compare(model, fixture)
    assert passes(errors), errors


def test_batch_of_one_and_shorter_token_padding_match_reference(model, fixture):
    """Each sample is independent and padding is invisible: row 1 alone, with trailing padding cut, is unchanged."""
    obs, io = reference.observation(fixture).select(slice(1, 2)), reference.tensors(fixture)
    length = int(obs.tokenized_prompt_mask.sum()) + 1
    obs.tokenized_prompt, obs.tokenized_prompt_mask = (
        obs.tokenized_prompt[:, :length],
        obs.tokenized_prompt_mask[:, :length],
    )
    with torch.no_grad():
        loss = model(obs, io["input.actions"][1:], io["input.noise"][1:], io["input.time"][1:])
        actions = model.sample_actions(obs, noise=io["input.sample_noise"][1:])
    assert relative_error(loss, io["output.loss"][1:]) < TOLERANCE
    assert relative_error(actions, io["output.sampled_actions"][1:]) < TOLERANCE


def test_bfloat16_sampling_agrees_with_float32(model, fixture):
    model_bf16 = PI0Pytorch(dataclasses.replace(fixture.config, dtype="bfloat16"))
    load_weights(model_bf16, fixture.weights_file)
    obs, noise = reference.observation(fixture), reference.tensors(fixture)["input.sample_noise"]
    actions_bf16 = model_bf16.sample_actions(obs, noise=noise)
    assert actions_bf16.dtype == torch.float32
    error = relative_error(actions_bf16, model.sample_actions(obs, noise=noise))
    assert 0 < error < BF16_TOLERANCE


def _sample(model: PI0Pytorch, obs: Observation, noise: torch.Tensor) -> torch.Tensor:
    return model.sample_actions(obs, noise=noise)


def test_model_sees_every_input(model, fixture):
    """Changing one image, one camera mask or one prompt token changes the sampled actions."""
    noise = reference.tensors(fixture)["input.sample_noise"]
    before = _sample(model, reference.observation(fixture), noise)[1]

    def new_image(obs):
        obs.images["left_wrist_0_rgb"][1] = torch.rand_like(obs.images["left_wrist_0_rgb"][1]) * 2 - 1

    def drop_camera(obs):
        obs.image_masks["base_0_rgb"][1] = False

    def new_token(obs):
        obs.tokenized_prompt[1, 1] = (obs.tokenized_prompt[1, 1] + 1) % fixture.config.vocab_size

    for edit in (new_image, drop_camera, new_token):
        edited = reference.observation(fixture)
        edit(edited)
        assert relative_error(_sample(model, edited, noise)[1], before) > 1e-2, edit.__name__


def test_padding_and_absent_cameras_are_invisible(model, fixture):
    """Scrambling an absent camera's pixels and a padding token id leaves that sample's actions unchanged."""
    obs, noise = reference.observation(fixture), reference.tensors(fixture)["input.sample_noise"]
    camera, sample = next((name, int((~mask).nonzero()[0])) for name, mask in obs.image_masks.items() if not mask.all())
    before = _sample(model, obs, noise)[sample]

    edited = reference.observation(fixture)
    edited.images[camera][sample] = torch.rand_like(edited.images[camera][sample])
    edited.tokenized_prompt[sample, int(edited.tokenized_prompt_mask[sample].sum())] = 7
    after = _sample(model, edited, noise)[sample]
    assert relative_error(after, before) < 1e-5


def test_check_reference_script_fails_on_a_wrong_model(fixture, tmp_path):
    script = REPO_ROOT / "scripts" / "check_reference.py"
    ok = subprocess.run([sys.executable, script, fixture.directory], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout

    broken = tmp_path / fixture.directory.name
    shutil.copytree(fixture.directory, broken)
    weights_file = next(broken.glob("*_weights.safetensors"))
    weights = safetensors.torch.load_file(weights_file)
    key = "paligemma_with_expert.paligemma.model.language_model.layers.1.self_attn.q_proj.weight"
    weights[key] = weights[key] * 1.5
    weights_file.chmod(0o644)
    safetensors.torch.save_file(weights, weights_file)
    bad = subprocess.run([sys.executable, script, broken], capture_output=True, text=True, check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout
