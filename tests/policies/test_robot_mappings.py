"""Robot mappings (LIBERO, ALOHA, DROID) onto the model's camera layout, and back to robot actions."""

from __future__ import annotations

import numpy as np
import pytest

from openpi import transforms
from openpi.policies import aloha_policy, droid_policy, libero_policy
from openpi.training import data_loader
from tests.helpers.lerobot import write_libero_dataset

MASK_FALSE_SLOT = "right_wrist_0_rgb"


def test_libero_inputs_from_a_lerobot_dataset_with_libero_features(tmp_path):
    written = write_libero_dataset(tmp_path / "libero", num_episodes=2, episode_length=4, image_size=32)
    samples = data_loader.LeRobotSamples(written.repo_id, str(written.root), action_horizon=3, action_keys=["actions"])
    pipeline = transforms.compose(
        [transforms.PromptFromLeRobotTask(), *libero_policy.LIBERO_REPACK.inputs, libero_policy.LiberoInputs()]
    )
    index = 5  # second episode, frame 1
    out = pipeline(samples[index])
    np.testing.assert_array_equal(out["image"]["base_0_rgb"], written.images["image"][index])
    np.testing.assert_array_equal(out["image"]["left_wrist_0_rgb"], written.images["wrist_image"][index])
    assert out["image"][MASK_FALSE_SLOT].shape == (32, 32, 3) and not out["image"][MASK_FALSE_SLOT].any()
    assert out["image_mask"] == {"base_0_rgb": True, "left_wrist_0_rgb": True, MASK_FALSE_SLOT: False}
    np.testing.assert_allclose(out["state"], written.state[index])
    # Action chunk: frames 1, 2, 3 of the episode; the last is repeated past the episode end.
    np.testing.assert_allclose(out["actions"], written.actions[[5, 6, 7]])
    assert out["prompt"] == written.tasks[index]
    assert samples[7]["actions"].shape == (3, 7)
    np.testing.assert_allclose(samples[7]["actions"][-1], written.actions[7])


def test_libero_outputs_keep_seven_dims():
    out = libero_policy.LiberoOutputs()({"actions": np.arange(64.0).reshape(2, 32)})
    np.testing.assert_array_equal(out["actions"], np.arange(64.0).reshape(2, 32)[:, :7])


def test_libero_accepts_uint8_hwc_examples():
    out = libero_policy.LiberoInputs()(libero_policy.make_libero_example())
    assert out["image"]["base_0_rgb"].dtype == np.uint8 and out["state"].shape == (8,)


def test_aloha_actions_roundtrip_through_pi_convention():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (5, 14)).astype(np.float32)
    actions[:, [6, 13]] = rng.uniform(0, 1, (5, 2))
    to_pi = aloha_policy.AlohaInputs()({"state": np.full(14, 0.5), "images": _aloha_images(), "actions": actions})
    padded = np.pad(to_pi["actions"], ((0, 0), (0, 18)))
    back = aloha_policy.AlohaOutputs()({"actions": padded})["actions"]
    assert back.shape == (5, 14)
    np.testing.assert_allclose(back, actions, atol=1e-5)
    assert not np.allclose(to_pi["actions"], actions)  # the conversion is not the identity


def test_aloha_state_sign_flips_and_gripper_angle():
    state = np.full(14, 0.5, dtype=np.float32)
    state[13] = 0.9
    out = aloha_policy.AlohaInputs()({"state": state, "images": _aloha_images()})["state"]
    np.testing.assert_allclose(out[[1, 2, 8, 9]], -0.5)
    np.testing.assert_allclose(out[[0, 3, 4, 5, 7, 10, 11, 12]], 0.5)
    np.testing.assert_allclose(out[6], -0.1400559217, atol=1e-6)  # hand-computed from the gripper geometry
    np.testing.assert_allclose(out[13], 0.5016401573, atol=1e-6)
    raw = aloha_policy.AlohaInputs(adapt_to_pi=False)({"state": state, "images": _aloha_images()})["state"]
    np.testing.assert_array_equal(raw, state)


def test_aloha_gripper_action_to_aloha_value():
    actions = np.zeros((1, 14), dtype=np.float32)
    actions[0, 6] = 0.3
    out = aloha_policy.AlohaOutputs()({"actions": actions})["actions"]
    np.testing.assert_allclose(out[0, 6], 0.6954031151, atol=1e-6)  # (0.3 + 0.5476 + 0.6213) / (1.4910 + 0.6213)


def test_aloha_cameras_chw_and_missing_wrist():
    images = _aloha_images(chw=True)
    del images["cam_right_wrist"]
    out = aloha_policy.AlohaInputs()({"state": np.zeros(14), "images": images})
    np.testing.assert_array_equal(out["image"]["base_0_rgb"], np.transpose(images["cam_high"], (1, 2, 0)))
    assert out["image_mask"] == {"base_0_rgb": True, "left_wrist_0_rgb": True, MASK_FALSE_SLOT: False}
    assert not out["image"][MASK_FALSE_SLOT].any()
    with pytest.raises(ValueError, match="cam_top"):
        aloha_policy.AlohaInputs()({"state": np.zeros(14), "images": {**images, "cam_top": images["cam_high"]}})
    with pytest.raises(ValueError, match="14 dims"):
        aloha_policy.AlohaInputs()({"state": np.zeros(8), "images": images})


def test_droid_inputs_and_outputs():
    example = droid_policy.make_droid_example()
    out = droid_policy.DroidInputs()(example)
    np.testing.assert_allclose(
        out["state"], np.concatenate([example["observation/joint_position"], example["observation/gripper_position"]])
    )
    np.testing.assert_array_equal(out["image"]["base_0_rgb"], example["observation/exterior_image_1_left"])
    np.testing.assert_array_equal(out["image"]["left_wrist_0_rgb"], example["observation/wrist_image_left"])
    assert not out["image_mask"][MASK_FALSE_SLOT]
    assert droid_policy.DroidOutputs()({"actions": np.zeros((10, 32))})["actions"].shape == (10, 8)


def _aloha_images(chw: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    shape = (3, 16, 16) if chw else (16, 16, 3)
    return {camera: rng.integers(0, 256, shape, dtype=np.uint8) for camera in aloha_policy.CAMERA_SLOTS.values()}
