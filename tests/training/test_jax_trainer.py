"""The JAX trainer (``scripts/train.py``): the loss falls, pruning telemetry is logged, checkpoints are orbax trees
committed atomically that resume bit-exactly, serve and convert; EMA, freezing, strict weights, the device mesh."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from openpi.models.orbax_params import flatten_params
from openpi.models.param_layout import CheckpointMismatchError
from openpi.models_jax import params as jax_params
from openpi.training import checkpoints, jax_trainer, validation_split
from openpi.training import config as _config
from tests.helpers import REPO_ROOT
from tests.helpers.training import (
    Crash,
    crash_after,
    embedded_pruning_config,
    pruned_embedded_config,
    pruned_fake_data_config,
    tiny_mixture,
)


def _flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in flatten_params(jax.device_get(tree)).items()}


def test_loss_falls_on_embedded_dataset_and_the_checkpoint_serves_and_converts(tmp_path: Path):
    steps = 40
    config = embedded_pruning_config(tmp_path, steps)
    result = jax_trainer.train(config)
    losses = [entry["loss"] for entry in result.history]
    assert losses[-1] < 0.75 * losses[1], losses
    first, last = result.history[0], result.history[-1]
    assert first["prune/noise_scale"] == pytest.approx(1.0)
    assert last["prune/noise_scale"] == pytest.approx(1.0 - (steps - 1) / steps)
    assert 1.0 <= last["prune/kept_tokens_overall_mean"] <= 2 * 16
    assert "prune/argmax_union_mean_noisy" in last
    checkpoint = config.checkpoint_dir / str(steps)
    assert checkpoints.complete_steps(config.checkpoint_dir) == [steps]
    assert {p.name for p in checkpoint.iterdir()} >= {"params", "train_state", "assets"}

    from openpi.conversion import convert
    from openpi.policies import policy_config
    from tests.helpers.policies import libero_observation

    served = jax_params.load_params(checkpoint, config.model)  # strict: the published layout
    for path, leaf in _flat(result.state["params"]).items():
        np.testing.assert_array_equal(flatten_params(served)[path], leaf)
    jax_policy = policy_config.create_trained_policy(config, checkpoint, sample_kwargs={"num_steps": 2})
    converted = convert.convert_checkpoint(checkpoint, config.model, tmp_path / "converted", "float32").parent
    torch_policy = policy_config.create_trained_policy(config, converted, sample_kwargs={"num_steps": 2})
    noise = np.random.default_rng(0).standard_normal((config.model.action_horizon, 32)).astype(np.float32)
    obs = libero_observation(0)  # the embedded dataset has LIBERO's features
    a = jax_policy.infer(obs, noise=noise)["actions"]
    b = torch_policy.infer(obs, noise=noise)["actions"]
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 2e-3


def _fake(tmp_path: Path, **overrides) -> _config.TrainConfig:
    return pruned_fake_data_config(tmp_path, **overrides)


def test_interrupted_run_resumes_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = _fake(tmp_path, num_train_steps=4, save_interval=2, keep_period=2, ema_decay=0.9)
    reference = jax_trainer.train(dataclasses.replace(config, exp_name="uninterrupted"))

    interrupted = dataclasses.replace(config, exp_name="interrupted")
    with monkeypatch.context() as patch:
        crash_after(3, patch)
        with pytest.raises(Crash):
            jax_trainer.train(interrupted)
    assert checkpoints.complete_steps(interrupted.checkpoint_dir) == [2]
    resumed = jax_trainer.train(dataclasses.replace(interrupted, resume=True))
    assert resumed.history[0]["step"] == 2.0
    for key in ("params", "ema", "opt_state"):
        a, b = (
            jax.tree.leaves(jax.device_get(resumed.state[key])),
            jax.tree.leaves(jax.device_get(reference.state[key])),
        )
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference.history[2:]]


def test_a_mixture_logs_per_dataset_and_validation_losses_and_a_resume_keeps_its_episodes(
    tmp_path: Path, embedded_data_home: Path, caplog: pytest.LogCaptureFixture
):
    config = pruned_embedded_config(tmp_path, tiny_mixture(), num_train_steps=2, save_interval=2, val_episodes=1)
    config = dataclasses.replace(config, val_interval=1, val_num_batches=1)
    first = jax_trainer.train(config)
    validations = {h["step"]: h for h in first.history if "val/loss" in h}
    assert list(validations) == [1.0, 2.0]
    final = validations[2.0]
    assert {"val/loss/easy", "val/loss/hard", "val/loss_served/easy", "val/loss_horizon/0"} <= final.keys()
    assert final["val/served_gap"] == pytest.approx(final["val/loss_served"] - final["val/loss"], abs=1e-9)
    logged = [{k for k in h if k.startswith("train/loss/")} for h in first.history if "loss" in h]
    assert all(logged) and set().union(*logged) == {"train/loss/easy", "train/loss/hard"}
    split = validation_split.load(config.checkpoint_dir / "2")
    assert split is not None and set(split.held_out) == {"easy", "hard"}

    resumed = jax_trainer.train(dataclasses.replace(config, num_train_steps=3, resume=True, val_episodes=2))
    assert "this run asks for --val-episodes 2: keeping the checkpoint's split" in caplog.text
    assert validation_split.load(config.checkpoint_dir / "3") == split
    assert [h["step"] for h in resumed.history if "val/loss" in h] == [3.0]


def test_a_save_interrupted_before_commit_leaves_no_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = _fake(tmp_path, num_train_steps=2, save_interval=1)

    def crash(directory, norm_stats):
        if (directory / jax_trainer.PARAMS_DIR).is_dir() and "_2_" in directory.name:
            raise Crash

    monkeypatch.setattr(checkpoints, "save_norm_stats", crash)
    with pytest.raises(Crash):
        jax_trainer.train(config)
    assert checkpoints.complete_steps(config.checkpoint_dir) == [1]
    assert sorted(p.name for p in config.checkpoint_dir.iterdir()) == ["1"]  # the temporary directory is gone


def test_ema_is_the_moving_average_and_is_what_the_checkpoint_serves(tmp_path: Path):
    decay = 0.5
    config = _fake(tmp_path, num_train_steps=1, save_interval=1, ema_decay=decay)
    initial = _flat(jax_trainer.initial_params(config))
    result = jax_trainer.train(config)
    params, ema = _flat(result.state["params"]), _flat(result.state["ema"])
    moved = [path for path in params if not np.array_equal(params[path], initial[path])]
    assert moved
    for path in params:
        np.testing.assert_allclose(ema[path], decay * initial[path] + (1 - decay) * params[path], rtol=1e-6, atol=1e-7)
    served = flatten_params(jax_params.load_params(config.checkpoint_dir / "1", config.model))
    for path in moved[:5]:
        np.testing.assert_array_equal(served[path], ema[path])


def test_frozen_parameters_stay_and_get_no_optimizer_state(tmp_path: Path):
    config = _fake(tmp_path, num_train_steps=2, save_interval=2, freeze_filter="vision")
    initial = _flat(jax_trainer.initial_params(config))
    result = jax_trainer.train(config)
    final = _flat(result.state["params"])
    vision = [path for path in final if path.startswith("PaliGemma/img/")]
    assert vision and all(np.array_equal(final[p], initial[p]) for p in vision)
    assert not np.array_equal(final["action_out_proj/kernel"], initial["action_out_proj/kernel"])
    optimizer_paths = {
        "/".join(str(k.key) for k in path if hasattr(k, "key"))
        for path, _ in jax.tree_util.tree_flatten_with_path(result.state["opt_state"])[0]
    }
    assert not any("img" in path for path in optimizer_paths)
    assert any("action_out_proj" in path for path in optimizer_paths)


def test_expert_only_preset_freezes_exactly_paligemma_without_the_expert(tmp_path: Path):
    config = _fake(tmp_path, freeze_filter="expert-only")
    params = jax_params.init_params(config.model)
    frozen = jax_trainer.frozen_paths(config, params)
    for path in flatten_params(params):
        in_expert = path.startswith("PaliGemma/llm/") and any(part.endswith("_1") for part in path.split("/"))
        assert (path in frozen) == (path.startswith("PaliGemma/") and not in_expert), path


def test_lora_preset_trains_the_adapters_vision_and_projections_only(tmp_path: Path):
    from tests.helpers.models import LORA_EXPERT, LORA_LLM

    config = _fake(tmp_path, freeze_filter="lora")
    model = dataclasses.replace(config.model, paligemma_variant=LORA_LLM, action_expert_variant=LORA_EXPERT)
    config = dataclasses.replace(config, model=model)
    params = jax_params.init_params(model)
    frozen = jax_trainer.frozen_paths(config, params)
    for path in flatten_params(params):
        base_llm_weight = path.startswith("PaliGemma/llm/") and "lora_" not in path
        assert (path in frozen) == base_llm_weight, path


def test_weights_load_strictly_and_fine_tunes_refuse_random_init(tmp_path: Path):
    from tests.helpers.conversion import write_orbax

    config = _fake(tmp_path)
    with pytest.raises(ValueError, match="--weight-path"):
        jax_trainer.initial_params(dataclasses.replace(config, allow_random_init=False))
    with pytest.raises(ValueError, match="--weight-path"):
        jax_trainer.train(dataclasses.replace(config, allow_random_init=False))
    assert not config.checkpoint_dir.exists(), "a refused run leaves no experiment folder behind"
    flat = _flat(jax_params.init_params(config.model))
    flat["PaliGemma/llm/unknown/w"] = np.zeros(3, np.float32)
    del flat["action_in_proj/bias"]
    checkpoint = write_orbax(tmp_path / "base", flat)
    with pytest.raises(CheckpointMismatchError, match="unknown parameter PaliGemma/llm/unknown/w"):
        jax_trainer.initial_params(dataclasses.replace(config, weight_path=str(checkpoint)))


_MESH_SCRIPT = """
import dataclasses, json, sys
from pathlib import Path
import jax
from openpi.training import jax_trainer
from tests.helpers.training import pruned_fake_data_config
tmp, fsdp = Path(sys.argv[1]), int(sys.argv[2])
config = pruned_fake_data_config(tmp, num_train_steps=2, save_interval=2, batch_size=4, fsdp_devices=fsdp)
result = jax_trainer.train(config)
kernel = result.state["params"]["PaliGemma"]["llm"]["layers"]["mlp"]["linear"]
print(json.dumps({"devices": jax.device_count(), "losses": [h["loss"] for h in result.history],
                  "shard_shape": list(kernel.sharding.shard_shape(kernel.shape)), "shape": list(kernel.shape)}))
"""


def _run_mesh(tmp_path: Path, devices: int, fsdp: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", _MESH_SCRIPT, str(tmp_path / f"d{devices}"), str(fsdp)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_four_device_mesh_shards_parameters_and_matches_one_device(tmp_path: Path):
    single = _run_mesh(tmp_path, 1, 1)
    mesh = _run_mesh(tmp_path, 4, 2)  # data 2 x fsdp 2
    assert mesh["devices"] == 4
    assert mesh["shard_shape"] != mesh["shape"]  # the parameters really are split over the fsdp axis
    np.testing.assert_allclose(mesh["losses"], single["losses"], rtol=1e-4)


def test_kept_patch_pictures_show_each_present_camera(tmp_path: Path):
    from openpi.models.observation import random_observation

    config = _fake(tmp_path)
    observation = random_observation(config.model, 2, num_cameras=3)
    observation.image_masks["right_wrist_0_rgb"][0] = False
    pictures = jax_trainer.kept_patch_pictures(config, jax_trainer.initial_params(config), observation)
    assert sorted(pictures) == ["base_0_rgb", "left_wrist_0_rgb"]
    size = config.model.vision_config.image_size
    assert all(picture.width > 2 * size and picture.height >= size for picture in pictures.values())
