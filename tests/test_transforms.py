"""Per-sample transforms: repacking, prompts, normalisation, resizing, tokenization, padding, delta actions."""

from __future__ import annotations

import numpy as np
import pytest

from openpi import transforms
from openpi.shared.normalize import NormStats


def _stats(dim: int) -> NormStats:
    return NormStats(mean=np.arange(dim), std=np.full(dim, 2.0), q01=np.full(dim, -4.0), q99=np.full(dim, 4.0))


def test_repack_renames_nested_and_flattened_keys():
    repack = transforms.RepackTransform({"images": {"cam": "obs/cam"}, "state": "observation.state", "x": "x"})
    out = repack({"obs": {"cam": 1, "other": 2}, "observation.state": 3, "x": 4, "dropped": 5})
    assert out == {"images": {"cam": 1}, "state": 3, "x": 4}


def test_repack_missing_key_names_it():
    with pytest.raises(KeyError, match=r"'image'.*observation/image"):
        transforms.RepackTransform({"observation/image": "image"})({"wrist_image": 0})


def test_default_prompt_and_prompt_from_task():
    assert transforms.InjectDefaultPrompt("go")({})["prompt"] == "go"
    assert transforms.InjectDefaultPrompt("go")({"prompt": "stay"})["prompt"] == "stay"
    assert "prompt" not in transforms.InjectDefaultPrompt(None)({})
    assert transforms.PromptFromLeRobotTask()({"task": "open drawer"})["prompt"] == "open drawer"
    assert transforms.PromptFromLeRobotTask({3: "close"})({"task_index": np.array(3)})["prompt"] == "close"
    with pytest.raises(ValueError, match="task"):
        transforms.PromptFromLeRobotTask()({"state": 0})


@pytest.mark.parametrize("use_quantiles", [False, True])
def test_normalize_roundtrip_and_values(use_quantiles):
    stats = {"state": _stats(3), "actions": _stats(3)}
    state = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    actions = np.array([[4.0, 0.0, -4.0]] * 2, dtype=np.float32)
    out = transforms.Normalize(stats, use_quantiles)({"state": state.copy(), "actions": actions.copy()})
    if use_quantiles:
        np.testing.assert_allclose(out["actions"][0], [1.0, 0.0, -1.0], atol=1e-5)
    else:
        np.testing.assert_allclose(out["state"], (state - np.arange(3)) / 2.0, atol=1e-5)
    back = transforms.Unnormalize(stats, use_quantiles)(out)
    np.testing.assert_allclose(back["state"], state, atol=1e-5)
    np.testing.assert_allclose(back["actions"], actions, atol=1e-5)


def test_resize_with_pad_keeps_aspect_and_pads_black():
    image = np.full((20, 40, 3), 200, dtype=np.uint8)
    out = transforms.ResizeImages(16, 16)({"image": {"cam": image}})["image"]["cam"]
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.all(out[:4] == 0) and np.all(out[-4:] == 0)  # 8 rows of content centred
    assert np.all(out[4:12] == 200)
    with pytest.raises(ValueError, match="uint8"):
        transforms.ResizeImages(16, 16)({"image": {"cam": image.astype(np.float32)}})


class _RecordingTokenizer:
    def __init__(self):
        self.calls = []

    def tokenize(self, prompt, state=None):
        self.calls.append((prompt, state))
        return np.arange(4, dtype=np.int32), np.array([True, True, False, False])


@pytest.mark.parametrize("discrete", [False, True])
def test_tokenize_prompt_passes_state_only_for_discrete_input(discrete):
    tokenizer = _RecordingTokenizer()
    state = np.array([0.5, -0.5], dtype=np.float32)
    out = transforms.TokenizePrompt(tokenizer, discrete)({"prompt": b"pick", "state": state})
    assert "prompt" not in out
    np.testing.assert_array_equal(out["tokenized_prompt"], np.arange(4))
    np.testing.assert_array_equal(out["tokenized_prompt_mask"], [True, True, False, False])
    prompt, passed = tokenizer.calls[0]
    assert prompt == "pick"
    if discrete:
        np.testing.assert_array_equal(passed, state)
    else:
        assert passed is None
    with pytest.raises(ValueError, match=r"has no .prompt. and the policy has no default prompt"):
        transforms.TokenizePrompt(tokenizer)({"state": state})


def test_pad_states_and_actions():
    out = transforms.PadStatesAndActions(5)({"state": np.ones(3), "actions": np.ones((2, 4))})
    np.testing.assert_array_equal(out["state"], [1, 1, 1, 0, 0])
    assert out["actions"].shape == (2, 5) and np.all(out["actions"][:, 4] == 0)
    with pytest.raises(ValueError, match="state has 6 dims"):
        transforms.PadStatesAndActions(5)({"state": np.ones(6)})


def test_delta_and_absolute_actions_are_inverse_on_masked_dims():
    mask = transforms.make_bool_mask(2, -1)
    assert mask == (True, True, False)
    state = np.array([1.0, 2.0, 3.0, 9.0])
    actions = np.array([[2.0, 2.0, 2.0, 2.0], [3.0, 3.0, 3.0, 3.0]])
    delta = transforms.DeltaActions(mask)({"state": state, "actions": actions.copy()})
    np.testing.assert_allclose(delta["actions"], [[1, 0, 2, 2], [2, 1, 3, 3]])
    back = transforms.AbsoluteActions(mask)({"state": state, "actions": delta["actions"]})
    np.testing.assert_allclose(back["actions"], actions)


def test_group_push_and_compose_order():
    def add(tag):
        return lambda d: {**d, "trace": (*d.get("trace", ()), tag)}

    group = transforms.Group(inputs=(add("a"),), outputs=(add("z"),)).push(inputs=(add("b"),), outputs=(add("y"),))
    assert transforms.compose(group.inputs)({})["trace"] == ("a", "b")
    assert transforms.compose(group.outputs)({})["trace"] == ("y", "z")


def test_to_uint8_hwc_converts_float_chw():
    image = np.zeros((3, 4, 5), dtype=np.float32)
    image[0] = 1.0
    out = transforms.to_uint8_hwc(image)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert np.all(out[..., 0] == 255) and np.all(out[..., 1:] == 0)
    with pytest.raises(ValueError, match="shape"):
        transforms.to_uint8_hwc(np.zeros((4, 5)))
