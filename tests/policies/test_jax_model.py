"""A JAX checkpoint folder (orbax ``params/`` + assets) serves directly through the JAX model, with the same actions
as its conversion served through the PyTorch model, and the pruning overrides and kept-patch replies of both."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openpi.models.pi0_config import RTCConfig
from openpi.models.reference_fixture import ReferenceFixture
from openpi.policies import libero_policy, policy_config
from openpi.training import config as _config
from tests.helpers import REPO_ROOT
from tests.helpers.conversion import jax_checkpoint_and_conversion
from tests.helpers.lerobot import write_tokenizer
from tests.helpers.policies import libero_observation

TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def folders(tmp_path_factory, reference_root: Path) -> tuple[ReferenceFixture, Path, Path, Path]:
    """The jax_pi05_tiny checkpoint with LIBERO norm stats, its PyTorch conversion, and a tokenizer."""
    tmp_path = tmp_path_factory.mktemp("jax_policy")
    fixture = ReferenceFixture.load(reference_root / "jax_pi05_tiny")
    checkpoint, converted = jax_checkpoint_and_conversion(fixture, tmp_path)
    return fixture, checkpoint, converted, write_tokenizer(tmp_path)


def _train_config(fixture: ReferenceFixture, tokenizer: Path, **model) -> _config.TrainConfig:
    data = libero_policy.LeRobotLiberoDataConfig(tokenizer_path=str(tokenizer))
    return _config.TrainConfig(name="tiny", model=dataclasses.replace(fixture.config, **model), data=data)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("pruning", [{}, {"token_pruning_enabled": True}], ids=["unpruned", "pruned"])
def test_jax_folder_serves_the_actions_of_its_pytorch_conversion(folders, pruning):
    fixture, checkpoint, converted, tokenizer = folders
    config = _train_config(fixture, tokenizer, **pruning)
    jax_policy = policy_config.create_trained_policy(config, checkpoint, sample_kwargs={"num_steps": 3})
    torch_policy = policy_config.create_trained_policy(config, converted, sample_kwargs={"num_steps": 3})
    assert (jax_policy.metadata["framework"], torch_policy.metadata["framework"]) == ("jax", "pytorch")
    noise = np.random.default_rng(0).standard_normal((3, fixture.config.action_horizon, 32)).astype(np.float32)
    observations = [libero_observation(seed) for seed in range(3)]
    jax_out = jax_policy.infer_batch(observations, noise=noise)
    torch_out = torch_policy.infer_batch(observations, noise=noise)
    assert _relative(jax_out["actions"], torch_out["actions"]) < TOLERANCE
    if pruning:
        for policy in (jax_policy, torch_policy):
            policy.model.set_token_pruner_keep_ratio(0.1)
        asked = [{**obs, "return_kept_patches": True} for obs in observations]
        jax_out, torch_out = jax_policy.infer_batch(asked, noise=noise), torch_policy.infer_batch(asked, noise=noise)
        np.testing.assert_array_equal(jax_out["kept_patch_mask"], torch_out["kept_patch_mask"])
        assert (
            jax_out["token_pruning"]["kept_tokens_overall_mean"]
            == torch_out["token_pruning"]["kept_tokens_overall_mean"]
        )
        assert _relative(jax_out["actions"], torch_out["actions"]) < TOLERANCE


def test_rtc_requests_through_a_jax_folder_match_its_pytorch_conversion(folders):
    fixture, checkpoint, converted, tokenizer = folders
    config = _train_config(fixture, tokenizer, rtc=RTCConfig(training_max_delay=2))
    prev = np.random.default_rng(1).uniform(-1, 1, (6, libero_policy.ACTION_DIM)).astype(np.float32)
    observations = [
        {**libero_observation(0), "prev_actions": prev, "inference_delay": 2},
        {**libero_observation(1), "prev_actions": prev[:4], "inference_delay": 1, "rtc_mode": "guided"},
        libero_observation(2),
    ]
    noise = np.random.default_rng(0).standard_normal((3, fixture.config.action_horizon, 32)).astype(np.float32)
    outputs = [
        policy_config.create_trained_policy(config, folder, sample_kwargs={"num_steps": 3}).infer_batch(
            observations, noise=noise
        )["actions"]
        for folder in (checkpoint, converted)
    ]
    assert _relative(outputs[0], outputs[1]) < TOLERANCE
    np.testing.assert_allclose(outputs[0][0, :2], prev[:2], atol=1e-4)  # trained: the committed prefix held


def test_raw_weights_of_a_jax_folder_are_refused(folders):
    fixture, checkpoint, _, tokenizer = folders
    with pytest.raises(ValueError, match="JAX checkpoint"):
        policy_config.create_trained_policy(_train_config(fixture, tokenizer), checkpoint, raw_weights=True)


SERVE_WITHOUT_TORCH = """
import dataclasses, sys, types
from pathlib import Path
import numpy as np
from openpi.models.reference_fixture import ReferenceFixture
from openpi.policies import libero_policy, policy_config

fixture_dir, checkpoint, tokenizer = map(Path, sys.argv[1:])
model = dataclasses.replace(ReferenceFixture.load(fixture_dir).config, token_pruning_enabled=True)
data = libero_policy.LeRobotLiberoDataConfig(tokenizer_path=str(tokenizer))
config = types.SimpleNamespace(name="tiny", model=model, data=data)  # a PolicyConfig (TrainConfig imports torch)
policy = policy_config.create_trained_policy(config, checkpoint, sample_kwargs={"num_steps": 2})
rng = np.random.default_rng(0)
reply = policy.infer({
    "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
    "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
    "observation/state": np.zeros(8, np.float32),
    "prompt": "pick up the black bowl",
    "return_kept_patches": True,
})
assert reply["kept_patch_mask"].any() and policy.metadata["framework"] == "jax"
print("torch" in sys.modules)
"""


def test_serving_a_jax_folder_imports_no_torch(folders):
    fixture, checkpoint, _, tokenizer = folders
    args = [sys.executable, "-c", SERVE_WITHOUT_TORCH, str(fixture.directory), str(checkpoint), str(tokenizer)]
    served = subprocess.run(args, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert served.returncode == 0, served.stderr
    assert served.stdout.strip().splitlines()[-1] == "False", "torch was imported on the JAX serving path"
