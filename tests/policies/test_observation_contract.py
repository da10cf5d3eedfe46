"""The policy's input contract: bad observations get one named error, never actions."""

from __future__ import annotations

import numpy as np
import pytest

from openpi.policies.observation_contract import validated_copy


def _libero(**overrides) -> dict:
    obs = {
        "observation/image": np.zeros((96, 96, 3), dtype=np.uint8),
        "observation/wrist_image": np.zeros((96, 96, 3), dtype=np.uint8),
        "observation/state": np.zeros(8, dtype=np.float32),
        "prompt": "pick up the cube",
    }
    return {**obs, **overrides}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"observation/state": np.array([0, np.nan] * 4, dtype=np.float32)}, "'observation/state' holds NaN"),
        ({"observation/state": np.full(8, np.inf)}, "'observation/state' holds NaN or infinite"),
        ({"observation/image": np.zeros((0, 96, 3), np.uint8)}, "'observation/image' is empty"),
        ({"observation/image": np.zeros((0, 0, 3), np.uint8)}, "'observation/image' is empty"),
        (
            {"observation/image": np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (2**40, 0, 3), (0, 0, 0))},
            "'observation/image' has an absurd shape",
        ),
        ({"observation/image": np.zeros((96, 96), np.uint8)}, r"'observation/image' must be \[H, W, 3\]"),
        ({"observation/image": np.full((8, 8, 3), 300, np.int64)}, r"must hold values in \[0, 255\], got \[300, 300\]"),
        ({"observation/image": np.full((8, 8, 3), 2.0, np.float32)}, r"must hold values in \[0, 1\]"),
        ({"observation/image": np.zeros((8, 8, 3), bool)}, "has dtype bool"),
        ({"prompt": None}, "'prompt' must be a string, got NoneType"),
        ({"prompt": 5}, "'prompt' must be a string, got int"),
        ({"prompt": {"text": "x"}}, "'prompt' must be a string"),
        ({"prompt": np.array([1, 2])}, "'prompt' must be a string, got ndarray"),
        ({"prompt": b"\xff\xfe bad"}, "'prompt' is not valid UTF-8"),
        ({"observation/state": np.array(["a"] * 8)}, "'observation/state' has dtype <U1"),
        ({"images": {"cam_high": np.zeros((3, 3), np.uint8)}}, r"'images/cam_high' must be \[H, W, 3\]"),
    ],
)
def test_bad_observations_get_a_named_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        validated_copy(_libero(**overrides))


def test_keys_must_be_strings():
    with pytest.raises(ValueError, match="keys must be strings, got 3"):
        validated_copy({**_libero(), 3: np.zeros(2)})


def test_good_observations_pass_unchanged_and_are_copied():
    obs = _libero(prompt=b"pick up the cube", images={"cam_high": np.zeros((3, 8, 8), np.float32)})
    copy = validated_copy(obs)
    assert copy["prompt"] == "pick up the cube" and copy["images"] is not obs["images"]
    assert copy["observation/image"] is obs["observation/image"]
    assert validated_copy(_libero(image_mask={"base_0_rgb": np.True_}))["image_mask"]["base_0_rgb"]


def test_not_a_dict():
    with pytest.raises(ValueError, match="must be a dict, got list"):
        validated_copy([1, 2])


LIBERO_KEYS = ("observation/image", "observation/wrist_image", "observation/state")
ALOHA_KEYS = ("state", "images/cam_high", "images/cam_low")


@pytest.mark.parametrize(
    ("obs", "keys", "message"),
    [
        (_libero(extra=np.zeros(3)), LIBERO_KEYS, r"unknown key\(s\) 'extra'; this policy takes 'observation/image'"),
        (_libero(extra={"a": np.zeros(3)}), LIBERO_KEYS, r"unknown key\(s\) 'extra'"),
        (_libero(**{"observation/state": {"x": 1.0}}), LIBERO_KEYS, "'observation/state' must be an array, got a dict"),
        ({"state": np.zeros(14), "images": np.zeros((8, 8, 3))}, ALOHA_KEYS, "'images' must be a dict of"),
        ({"state": np.zeros(14), "images": {"cam_top": np.zeros((8, 8, 3))}}, ALOHA_KEYS, "'images/cam_top'"),
        (_libero(token_prune_keep_ratio=0.5), None, "'token_prune_keep_ratio' cannot be set per request"),
        (_libero(token_prune_keep_tokens=3), LIBERO_KEYS, "'token_prune_keep_tokens' cannot be set per request"),
        (_libero(return_kept_patches=np.ones(3, bool)), LIBERO_KEYS, "'return_kept_patches' must be true or false"),
        (_libero(return_kept_patches="yes"), LIBERO_KEYS, "'return_kept_patches' must be true or false, got str"),
        (_libero(**{"observation/state": np.full(8, 1e39)}), LIBERO_KEYS, "holds 1e\\+39, which does not fit float32"),
        ({"a": {"b": {"c": {"d": {"e": np.zeros(2)}}}}}, None, "'a/b/c/d' is nested more than 3 dicts deep"),
    ],
)
def test_keys_the_robot_does_not_take_and_misplaced_values_are_named(obs, keys, message):
    with pytest.raises(ValueError, match=message):
        validated_copy(obs, keys)


def test_the_robots_keys_and_the_request_options_pass():
    obs = _libero(return_kept_patches=np.bool_(True))
    assert validated_copy(obs, LIBERO_KEYS)["return_kept_patches"] is True
    aloha = {"state": np.zeros(14), "images": {"cam_high": np.zeros((3, 8, 8), np.uint8)}, "prompt": "fold"}
    assert validated_copy(aloha, ALOHA_KEYS)["images"]["cam_high"].shape == (3, 8, 8)
    assert validated_copy(_libero(**{"observation/state": np.full(8, 3e38)}), LIBERO_KEYS)
