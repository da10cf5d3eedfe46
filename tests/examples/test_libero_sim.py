"""The real LIBERO simulator against our server: ``examples/libero/main.py`` in its own environment, one task of
``libero_spatial`` for a few steps, a tiny pruning checkpoint served on loopback.

Marked ``libero`` (deselected by default; ``.ci/run`` runs it as its own step). The LIBERO environment is created by
``examples/libero/setup_env.sh`` under ``$LIBERO_VENV`` (default: a per-user cache, reused between runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro

from openpi.cli import serve_policy
from openpi.models import tokenizer
from openpi.serving.recorder import read_records
from tests.helpers import REPO_ROOT
from tests.helpers.policies import PROMPTS, make_train_config, write_checkpoint

pytestmark = pytest.mark.libero

LIBERO_VENV = Path(os.environ.get("LIBERO_VENV", Path.home() / ".cache" / "openpi-lightvla" / "libero-venv"))
CONFIG_NAME = "debug_pi05_lightvla"
TASK_ID, MAX_STEPS, REPLAN_STEPS, RESIZE = 0, 20, 5, 224
DIMMED = 0.3  # eval_loop.draw_kept_patches' factor for dropped patches

# Runs in the LIBERO environment (imageio-ffmpeg): decodes a video into per-frame statistics.
VIDEO_PROBE = """
import sys
import imageio.v2 as imageio
import numpy as np
frames = np.stack([np.asarray(f) for f in imageio.mimread(sys.argv[1], memtest=False)]).astype(np.float64)
np.save(sys.argv[2], frames)
"""


@pytest.fixture(scope="module")
def libero_python() -> Path:
    """The LIBERO environment's interpreter, created (or found up to date) by setup_env.sh."""
    env = {**os.environ, "LIBERO_VENV": str(LIBERO_VENV)}
    completed = subprocess.run(
        ["bash", str(REPO_ROOT / "examples" / "libero" / "setup_env.sh")], env=env, capture_output=True, text=True
    )
    assert completed.returncode == 0, f"setup_env.sh failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return LIBERO_VENV / "bin" / "python"


@pytest.fixture(scope="module")
def rollout(tmp_path_factory, libero_python) -> dict:
    """Serves a tiny LightVLA checkpoint (recording every exchange) and runs one short LIBERO episode against it."""
    workdir = tmp_path_factory.mktemp("libero")
    tokenizer_path = tokenizer.train_sentencepiece(PROMPTS, workdir / "tok", vocab_size=300)
    train_config = make_train_config(tokenizer_path, CONFIG_NAME)
    checkpoint = write_checkpoint(workdir / "checkpoint", train_config)
    records = workdir / "records"
    argv = ["--port", "0", "--host", "127.0.0.1", "--pytorch-device", "cpu", "--num-steps", "2", "--record"]
    argv += ["--record-dir", str(records), "policy:checkpoint", "--policy.config", CONFIG_NAME]
    argv += ["--policy.dir", str(checkpoint)]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch, contextlib.ExitStack() as stack:
            patch.setattr(serve_policy._config, "get_config", {CONFIG_NAME: train_config}.__getitem__)
            server = serve_policy.create_server(tyro.cli(serve_policy.Args, args=argv))
            port = stack.enter_context(server.running_in_background())
            client = [str(libero_python), str(REPO_ROOT / "examples" / "libero" / "main.py"), "--port", str(port)]
            client += ["--task-suite-name", "libero_spatial", "--task-ids", str(TASK_ID), "--num-trials-per-task", "1"]
            client += ["--max-steps", str(MAX_STEPS), "--replan-steps", str(REPLAN_STEPS), "--draw-kept-patches"]
            client += ["--out-dir", str(workdir / "out")]
            env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
            completed = subprocess.run(client, env=env, capture_output=True, text=True, timeout=900)
    finally:
        torch.set_num_threads(previous_threads)
    assert completed.returncode == 0, f"main.py failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    out = workdir / "out" / "libero_spatial"
    videos = sorted((out / "videos").glob("*.mp4"))
    frames_path = workdir / "frames.npy"
    if videos:
        subprocess.run([str(libero_python), "-c", VIDEO_PROBE, str(videos[0]), str(frames_path)], check=True)
    return {
        "results": json.loads((out / "results.json").read_text()),
        "videos": videos,
        "frames": np.load(frames_path) if videos else None,
        "records": read_records(records),
    }


def test_results_json_is_complete(rollout):
    results = rollout["results"]
    assert results["suite"] == "libero_spatial" and results["task_ids"] == [TASK_ID]
    assert results["episodes"] == 1 and results["successes"] in (0, 1)
    (task,) = results["tasks"]
    assert task["task_id"] == TASK_ID and task["description"] and task["episode_steps"] == [MAX_STEPS]
    assert results["infer_ms"]["requests"] == MAX_STEPS // REPLAN_STEPS and results["infer_ms"]["p50"] > 0


def test_the_server_received_libero_observations_in_the_documented_format(rollout):
    records = rollout["records"]
    assert len(records) == MAX_STEPS // REPLAN_STEPS and all(r.error is None for r in records)
    task = rollout["results"]["tasks"][0]["description"]
    for record in records:
        request = record.request
        assert set(request) == {
            "observation/image",
            "observation/wrist_image",
            "observation/state",
            "prompt",
            "return_kept_patches",
        }
        for camera in ("observation/image", "observation/wrist_image"):
            assert request[camera].shape == (RESIZE, RESIZE, 3) and request[camera].dtype == np.uint8
            assert request[camera].std() > 10, "a rendered scene, not a blank frame"
        assert request["observation/state"].shape == (8,) and request["observation/state"].dtype == np.float32
        assert request["prompt"] == task


def test_the_returned_actions_moved_the_robot(rollout):
    positions = np.stack([r.request["observation/state"][:3] for r in rollout["records"]])
    assert np.linalg.norm(positions[-1] - positions[0]) > 1e-3, "the end effector did not move"
    images = [r.request["observation/image"].astype(np.float64) for r in rollout["records"]]
    assert np.abs(images[-1] - images[0]).mean() > 0.5, "the agent view did not change"


def test_the_video_shows_the_scene_with_the_kept_patches_drawn(rollout):
    (video,) = rollout["videos"]
    assert video.name == f"task{TASK_ID:02d}_ep000_failure.mp4" or video.name.endswith("_success.mp4")
    frames = rollout["frames"]
    assert frames.shape[0] == MAX_STEPS and frames.shape[1:] == (RESIZE, RESIZE, 3)
    assert frames[0].std() > 10
    first = rollout["records"][0]
    kept = np.asarray(first.reply["kept_patch_mask"], dtype=bool)
    side = int(np.sqrt(kept.size // 3))
    assert 0 < kept[: side * side].sum() < side * side, "the pruner kept some but not all agent-view patches"
    patch = RESIZE // side
    sent = _patch_means(first.request["observation/image"].astype(np.float64), patch)
    shown = _patch_means(frames[0], patch)
    bright = sent > 30
    ratio = shown[bright] / sent[bright]
    drawn_as_kept = ratio > (1 + DIMMED) / 2
    agreement = (drawn_as_kept == kept[: side * side].reshape(side, side)[bright]).mean()
    assert agreement > 0.95, f"only {agreement:.0%} of the patches are drawn as the server's mask says"


def _patch_means(image: np.ndarray, patch: int) -> np.ndarray:
    side = image.shape[0] // patch
    return image[: side * patch, : side * patch].reshape(side, patch, side, patch, 3).mean(axis=(1, 3, 4))
