"""What published checkpoints and ported upstream code depend on behaves as in upstream openpi.

Each test names the upstream behaviour it pins and where upstream defines it (paths in
github.com/Physical-Intelligence/openpi). The deliberate differences are listed, with their reasons, in
docs/upstream.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from openpi import transforms
from openpi.models.pi0_config import Pi0Config, tiny_config
from openpi.shared import normalize

DUMMY = "width=64,depth=1,mlp_dim=128,num_heads=8,num_kv_heads=1,head_dim=16"
LORA = f"{DUMMY},lora_rank=2,lora_alpha=2"


def _stats(dim: int, offset: float = 0.0) -> normalize.NormStats:
    return normalize.NormStats(
        mean=np.full(dim, offset), std=np.full(dim, 2.0), q01=np.full(dim, -4.0), q99=np.full(dim, 4.0)
    )


# ------------------------------------------------------------------------------------- 1. π0.5's discrete state
def test_state_below_minus_one_is_bin_minus_one(tmp_path: Path):
    """models/tokenizer.py: ``np.digitize(state, np.linspace(-1, 1, 257)[:-1]) - 1``, unclipped: below -1 is bin
    -1, at or above the last edge (1 - 2/256) is 255."""
    from openpi.models import tokenizer
    from tests.helpers.lerobot import write_tokenizer

    state = np.array([-1.5, -1.0, -1e-6, 0.0, 0.999, 1.5])
    np.testing.assert_array_equal(tokenizer.discretize_state(state), [-1, 0, 127, 128, 255, 255])
    tok = tokenizer.PaligemmaTokenizer(max_len=64, model_path=write_tokenizer(tmp_path))
    ids, mask = tok.tokenize("move", state[:2])
    assert tok.decode(ids[mask]) == "Task: move, State: -1 0;\nAction: "


# ---------------------------------------------------------------------------------------------- 2. resize_with_pad
def test_resize_with_pad_truncates_size_and_padding():
    """openpi_client/image_tools.py (the training pipeline's ResizeImages): ``int(cur / ratio)`` for the resized
    size and ``int((target - resized) / 2)`` for the padding, so 480x848 -> 224x224 keeps 126 rows from row 49."""
    from openpi.shared import image_tools

    image = np.full((480, 848, 3), 200, np.uint8)
    for out in (
        image_tools.resize_with_pad(image, 224, 224),
        transforms.ResizeImages(224, 224)({"image": {"cam": image}})["image"]["cam"],
    ):
        content = np.flatnonzero(out[:, 112, 0])
        assert (content[0], len(content)) == (49, 126)
        assert np.all(out[49:175] == 200) and not out[:49].any() and not out[175:].any()


def test_resize_with_pad_accepts_batches():
    """openpi_client/image_tools.py: ``[..., H, W, C]`` in, ``[..., height, width, C]`` out, each image resized."""
    from openpi.shared import image_tools

    images = np.zeros((2, 3, 30, 40, 3), np.uint8)
    images[1, 2] = 255
    out = image_tools.resize_with_pad(images, 16, 16)
    assert out.shape == (2, 3, 16, 16, 3) and out.dtype == np.uint8
    assert not out[0].any() and out[1, 2, 2:14].min() == 255 and not out[1, :2].any()
    assert image_tools.resize_with_pad(images, 30, 40) is images


# ----------------------------------------------------------------------------------------------- 3. LoRA freezing
def test_get_freeze_filter_follows_the_variants():
    """models/pi0_config.py ``Pi0Config.get_freeze_filter``: LoRA on either Gemma gives a filter; none gives
    ``nnx.Nothing`` (nothing frozen)."""
    assert Pi0Config(paligemma_variant="gemma_2b_lora").get_freeze_filter() == "lora"
    assert Pi0Config(action_expert_variant="gemma_300m_lora").get_freeze_filter() == "lora"
    assert Pi0Config().get_freeze_filter() is None


@pytest.mark.parametrize(("llm_lora", "expert_lora"), [(True, False), (False, True), (True, True)])
def test_lora_freezes_the_base_weights_of_each_gemma_with_lora(llm_lora, expert_lora):
    """models/pi0_config.py ``get_freeze_filter``: a Gemma with LoRA has its base weights frozen (the language
    model's embedding and final norm included) and its LoRA factors trainable; a Gemma without LoRA, the vision tower
    and the projections stay trainable."""
    from openpi.models_pytorch.pi0_pytorch import PI0Pytorch
    from openpi.training import freezing

    config = tiny_config(
        paligemma_variant=LORA if llm_lora else DUMMY, action_expert_variant=LORA if expert_lora else DUMMY
    )
    model = PI0Pytorch(config)
    frozen = set(freezing.freeze_parameters(model, "lora"))
    for name, _ in model.named_parameters():
        in_llm = ".language_model." in name
        in_expert = ".gemma_expert." in name
        base = not name.endswith((".lora_a", ".lora_b"))
        expected = base and ((in_llm and llm_lora) or (in_expert and expert_lora))
        assert (name in frozen) == expected, name


@pytest.mark.parametrize(("llm_lora", "expert_lora"), [(True, False), (False, True)])
def test_jax_lora_freezes_the_base_weights_of_each_gemma_with_lora(tmp_path, llm_lora, expert_lora):
    """The same rule over the published parameter paths (``.*llm.*`` and ``.*llm.*_1.*``, minus ``.*lora.*``)."""
    from openpi.models_jax import params as jax_params
    from openpi.training import config as _config
    from openpi.training import jax_trainer

    model = tiny_config(
        paligemma_variant=LORA if llm_lora else DUMMY, action_expert_variant=LORA if expert_lora else DUMMY
    )
    config = dataclasses.replace(_config.get_config("debug"), model=model, freeze_filter=model.get_freeze_filter())
    params = jax_params.init_params(model)
    frozen = jax_trainer.frozen_paths(config, params)
    for path in jax_trainer.flatten_params(params):
        in_expert = path.startswith("PaliGemma/llm/") and any(part.endswith("_1") for part in path.split("/"))
        in_llm = path.startswith("PaliGemma/llm/") and not in_expert
        expected = "lora" not in path and ((in_llm and llm_lora) or (in_expert and expert_lora))
        assert (path in frozen) == expected, path


# -------------------------------------------------------------------------------------- 4. Normalize / Unnormalize
def test_normalize_applies_to_every_key_its_statistics_hold():
    """transforms.py ``Normalize``/``Unnormalize``: ``apply_tree`` over the statistics' (``/``-flattened) keys;
    keys the sample lacks are skipped by Normalize and an error for Unnormalize (``strict=True``)."""
    stats = {"state": _stats(2), "effort": _stats(2, 1.0), "arm/joints": _stats(2, 2.0)}
    data = {"state": np.ones(2), "effort": np.ones(2), "arm": {"joints": np.ones(2), "other": np.ones(2)}}
    out = transforms.Normalize(stats)(data)
    np.testing.assert_allclose(out["effort"], [0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(out["arm"]["joints"], [-0.5, -0.5], atol=1e-5)
    np.testing.assert_array_equal(out["arm"]["other"], [1.0, 1.0])
    back = transforms.Unnormalize(stats)(out)
    np.testing.assert_allclose(back["arm"]["joints"], [1.0, 1.0], atol=1e-5)
    with pytest.raises(ValueError, match="effort"):
        transforms.Unnormalize(stats)({"state": np.ones(2), "arm": {"joints": np.ones(2)}})


def test_norm_stats_serialize_json_round_trips():
    """shared/normalize.py ``serialize_json``/``deserialize_json``: ``{"norm_stats": {key: {...}}}`` as a string."""
    stats = {"state": _stats(3)}
    text = normalize.serialize_json(stats)
    assert '"norm_stats"' in text
    back = normalize.deserialize_json(text)
    np.testing.assert_array_equal(back["state"].q99, stats["state"].q99)


# ---------------------------------------------------------------------------------------------- 5. config names
UPSTREAM_NAMES = {
    "pi0_libero": "pi0_libero_pytorch",
    "pi05_libero": "pi05_libero_pytorch",
    "pi0_libero_low_mem_finetune": "pi0_libero_low_mem_finetune_pytorch",
    "pi0_aloha_sim": "pi0_aloha_sim_pytorch",
    "pi05_droid": "pi05_droid_pytorch",
}


@pytest.mark.parametrize(("upstream", "ours"), UPSTREAM_NAMES.items())
def test_upstream_config_names_resolve_to_the_same_recipe(upstream, ours):
    """training/config.py: the names upstream users type; checkpoints and assets stay under the name typed."""
    from openpi.training import config as _config

    assert _config.get_config(upstream) == dataclasses.replace(_config.get_config(ours), name=upstream)
    assert upstream in _config.list_configs() and ours in _config.list_configs()
    parsed = _config.cli([upstream, "--exp-name", "e1", "--batch-size", "8"])
    assert parsed.checkpoint_dir.parts[-2:] == (upstream, "e1") and parsed.batch_size == 8


@pytest.mark.parametrize(
    ("name", "pi05", "horizon", "asset_id", "prompt"),
    [
        ("pi0_droid", False, 10, "droid", None),
        ("pi0_aloha", False, 50, "trossen", None),
        ("pi05_aloha", True, 50, "trossen", None),
        ("pi0_aloha_towel", False, 50, "trossen", "fold the towel"),
        ("pi0_aloha_tupperware", False, 50, "trossen", "open the tupperware and put the food on the plate"),
    ],
)
def test_upstream_inference_configs_are_registered(name, pi05, horizon, asset_id, prompt):
    """training/config.py: upstream's inference configs for its published checkpoints (model, asset, prompt)."""
    from openpi.training import config as _config

    config = _config.get_config(name)
    assert (config.model.pi05, config.model.action_horizon) == (pi05, horizon)
    assert (config.data.assets.asset_id, config.data.default_prompt) == (asset_id, prompt)


# ------------------------------------------------------------------------------------ 6a. smaller: FakeDataset
def test_fake_dataset_takes_the_sample_count():
    """training/data_loader.py: ``FakeDataset(model_config, num_samples)``; the horizon is the model's."""
    from openpi.training.data_loader import FakeDataset

    config = tiny_config(action_horizon=3)
    dataset = FakeDataset(config, 5)
    assert len(dataset) == 5 and dataset[4]["actions"].shape == (3, config.action_dim)


# ------------------------------------------------------------------------------------- 6b. smaller: transforms
def test_none_mask_and_none_stats_are_no_ops():
    """transforms.py: ``DeltaActions(mask=None)``, ``AbsoluteActions(mask=None)``, ``Normalize(None)`` and
    ``Unnormalize(None)`` return their input unchanged."""
    item = {"state": np.array([1.0, 2.0]), "actions": np.array([[3.0, 4.0]])}
    for transform in (
        transforms.DeltaActions(None),
        transforms.AbsoluteActions(None),
        transforms.Normalize(None),
        transforms.Unnormalize(None),
    ):
        assert transform(item) is item
        np.testing.assert_array_equal(item["actions"], [[3.0, 4.0]])


def test_transforms_raise_value_error():
    """transforms.py: a missing or unknown task index, a missing prompt and a missing state are ``ValueError``."""
    with pytest.raises(ValueError, match="task_index=2 not found in task mapping"):
        transforms.PromptFromLeRobotTask({1: "go"})({"task_index": 2})
    with pytest.raises(ValueError, match="task_index"):
        transforms.PromptFromLeRobotTask({1: "go"})({})
    with pytest.raises(ValueError, match="Prompt is required"):
        transforms.TokenizePrompt(_NoTokenizer())({})
    with pytest.raises(ValueError, match="State is required"):
        transforms.TokenizePrompt(_NoTokenizer(), discrete_state_input=True)({"prompt": "go"})


class _NoTokenizer:
    def tokenize(self, prompt, state=None):
        raise AssertionError("not reached")


def test_transform_dict_renames_removes_and_refuses_conflicts():
    """transforms.py ``transform_dict``: full-match regex patterns over ``/``-flattened keys, first match wins,
    ``None`` removes, backreferences rename; a clash or a leaf aliasing a node is a ``ValueError``."""
    tree = {"cams": {"top": 1, "wrist": 2}, "state": 3}
    assert transforms.transform_dict({"cams/(.+)": r"images/\1", "state": None}, tree) == {
        "images": {"top": 1, "wrist": 2}
    }
    assert transforms.transform_dict({"cams": None}, tree) == tree
    with pytest.raises(ValueError, match="already exists"):
        transforms.transform_dict({"cams/top": "state"}, tree)
    with pytest.raises(ValueError, match="aliases a node"):
        transforms.transform_dict({"state": "cams"}, tree)


def test_unflatten_dict_and_apply_tree():
    """transforms.py ``unflatten_dict`` inverts ``flatten_dict``; ``apply_tree(tree, selector, fn, strict=)`` maps
    the selected leaves and, strict, refuses selector keys the tree lacks."""
    tree = {"a": {"b": 1, "c": 2}, "d": 3}
    assert transforms.unflatten_dict(transforms.flatten_dict(tree)) == tree
    assert transforms.apply_tree(tree, {"a": {"b": 10}}, lambda x, s: x * s) == {"a": {"b": 10, "c": 2}, "d": 3}
    with pytest.raises(ValueError, match="x"):
        transforms.apply_tree(tree, {"x": 1}, lambda x, s: x, strict=True)


def test_subsample_actions_and_pad_to_dim_axis_value():
    """transforms.py ``SubsampleActions(stride)`` keeps every stride-th action; ``pad_to_dim(x, dim, axis, value)``
    pads one axis with a value."""
    assert transforms.SubsampleActions(2)({"actions": np.arange(5)})["actions"].tolist() == [0, 2, 4]
    padded = transforms.pad_to_dim(np.ones((2, 3)), 4, axis=0, value=-1.0)
    np.testing.assert_array_equal(padded, [[1, 1, 1], [1, 1, 1], [-1, -1, -1], [-1, -1, -1]])


# --------------------------------------------------------------------------------------- 6c. smaller: msgpack
def test_msgpack_round_trips_datetime64_arrays():
    """openpi_client/msgpack_numpy.py: any dtype but object, void and complex round-trips, datetime64 included."""
    from openpi.serving import msgpack_numpy

    stamps = np.array(["2024-01-02T03:04:05.000000006", "NaT"], dtype="datetime64[ns]")
    spans = np.array([1, 2], dtype="timedelta64[ms]")
    out = msgpack_numpy.unpackb(msgpack_numpy.packb({"t": stamps, "d": spans}))
    np.testing.assert_array_equal(out["t"], stamps)
    assert out["t"].dtype == stamps.dtype and out["d"].dtype == spans.dtype


# -------------------------------------------------------------------------------------- 6d. smaller: download
def test_download_resolves_local_paths_file_urls_and_the_cache(tmp_path, monkeypatch):
    """shared/download.py ``maybe_download``: a local path is returned resolved (missing: ``FileNotFoundError``);
    a remote URL maps to ``$OPENPI_DATA_HOME/<netloc>/<path>`` and a cached copy is used as is."""
    from openpi.shared import download

    monkeypatch.setenv("OPENPI_DATA_HOME", str(tmp_path / "cache"))
    local = tmp_path / "file.bin"
    local.write_bytes(b"x")
    assert download.maybe_download(str(local)) == local.resolve()
    assert download.maybe_download(f"file://{local}") == local.resolve()
    with pytest.raises(FileNotFoundError):
        download.maybe_download(str(tmp_path / "missing"))
    cached = tmp_path / "cache" / "big_vision" / "paligemma_tokenizer.model"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"model")
    assert download.get_cache_dir() == (tmp_path / "cache").resolve()
    assert download.maybe_download("gs://big_vision/paligemma_tokenizer.model") == cached.resolve()


# ------------------------------------------------------------------------------------------ 7. the client module
def test_client_has_the_published_clients_interface():
    """openpi_client/websocket_client_policy.py: ``WebsocketClientPolicy(host, port)`` (or a ``ws://`` URI as host
    and no port), ``get_server_metadata()``, ``infer(obs)``, ``reset()``."""
    from openpi.serving.websocket_client import WebsocketClientPolicy
    from openpi.serving.websocket_policy_server import WebsocketPolicyServer
    from tests.helpers.serving import EchoPolicy, state_vector

    with WebsocketPolicyServer(EchoPolicy(), "127.0.0.1", 0).running_in_background() as port:
        for client in (WebsocketClientPolicy("127.0.0.1", port), WebsocketClientPolicy(f"ws://127.0.0.1:{port}", None)):
            assert client.get_server_metadata()["name"] == "echo"
            client.reset()
            np.testing.assert_array_equal(client.infer({"state": state_vector(0.5)})["actions"][0], state_vector(0.5))
            client.close()
