"""Evaluates a served policy on a LIBERO task suite with the published ``openpi-client``.

Start the server (``uv run scripts/serve_policy.py --env LIBERO``), then run this in the LIBERO environment that
``setup_env.sh`` creates:

    examples/libero/.venv/bin/python examples/libero/main.py --task-suite-name libero_spatial --replan-steps 5
    examples/libero/.venv/bin/python examples/libero/main.py --async --rtc guided     # asynchronous, real-time chunking

Writes one rollout video per episode and ``results.json`` (per-task and total success, episode lengths, the server's
inference times) to ``--out-dir``/<suite>/. Renders headless (EGL) unless ``MUJOCO_GL`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import sys
import time
import urllib.error
import urllib.request
import warnings
from typing import Annotated

import eval_loop
import imageio
import numpy as np
import tyro
from openpi_client import image_tools, websocket_client_policy


@dataclasses.dataclass
class Args:
    host: str = "127.0.0.1"
    """Address of the policy server (scripts/serve_policy.py)."""
    port: int = 8000
    """Port of the policy server."""
    api_key: str | None = None
    """Sent as `Authorization: Api-Key <key>` when the server requires one."""
    task_suite_name: str = "libero_spatial"
    """One of libero_spatial, libero_object, libero_goal, libero_10, libero_90."""
    task_ids: tuple[int, ...] | None = None
    """Evaluate only these tasks of the suite (default: all)."""
    max_steps: int | None = None
    """Override the suite's maximum episode length (e.g. for a smoke run)."""
    draw_kept_patches: bool = False
    """Ask a pruning server for its kept patches and dim the dropped ones in the videos."""
    replan_steps: int = 5
    """Execute this many actions of each predicted chunk before querying the policy again."""
    run_async: Annotated[bool, tyro.conf.arg(name="async")] = False
    """Execute the current chunk while the next one is inferred (the delay is measured in executed steps)."""
    rtc: str = "none"
    """With --async: none (naive), guided or trained real-time chunking (docs/rtc.md)."""
    num_steps_wait: int = 10
    """No-op steps at the start of each episode while objects settle."""
    num_trials_per_task: int = 50
    """Episodes per task (at most the suite's number of initial states)."""
    camera_resolution: int = 256
    """Resolution LIBERO renders the cameras at."""
    resize_size: int = 224
    """Images are resized with padding to this size before sending."""
    out_dir: str = "data/libero"
    """Videos and results.json go to OUT_DIR/<suite>/."""
    video_fps: int = 10
    """Frame rate of the rollout videos."""
    seed: int = 7
    """Seed of numpy and of the simulator."""
    wait_s: float = 600.0
    """Wait this long for the server's /healthz to answer 200 (it loads and warms up the model first)."""


def wait_for_server(host: str, port: int, timeout_s: float) -> None:
    """Polls ``http://host:port/healthz`` until it answers 200; the websocket refuses connections until then."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet (refused) or still warming up (503)
        if time.monotonic() > deadline:
            raise SystemExit(f"error: no policy server ready at {host}:{port} after {timeout_s:.0f} s (--wait-s)")
        logging.info("Waiting for the server at %s:%d (/healthz) ...", host, port)
        time.sleep(2.0)


def main(args: Args) -> None:
    # Before LIBERO / robosuite are imported: headless rendering, and LIBERO's config inside its venv (setup_env.sh).
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("LIBERO_CONFIG_PATH", str(pathlib.Path(sys.prefix) / "libero-config"))
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    if args.task_suite_name not in eval_loop.MAX_STEPS:
        raise ValueError(f"Unknown task suite {args.task_suite_name!r}; known: {sorted(eval_loop.MAX_STEPS)}")
    np.random.seed(args.seed)
    suite = benchmark.get_benchmark_dict()[args.task_suite_name]()
    task_ids = list(args.task_ids) if args.task_ids is not None else list(range(suite.n_tasks))
    if unknown := [i for i in task_ids if not 0 <= i < suite.n_tasks]:
        raise ValueError(f"{args.task_suite_name} has tasks 0..{suite.n_tasks - 1}; got {unknown}")
    tasks = [eval_loop.Task(suite.get_task(i).language, suite.get_task_init_states(i), i) for i in task_ids]

    def make_env(index: int) -> eval_loop.LiberoEnv:
        task = suite.get_task(task_ids[index])
        bddl_file = pathlib.Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        env = OffScreenRenderEnv(
            bddl_file_name=str(bddl_file), camera_heights=args.camera_resolution, camera_widths=args.camera_resolution
        )
        env.seed(args.seed)
        return env

    def preprocess_image(image: np.ndarray) -> np.ndarray:
        return image_tools.convert_to_uint8(image_tools.resize_with_pad(image, args.resize_size, args.resize_size))

    out_dir = pathlib.Path(args.out_dir) / args.task_suite_name
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)

    def save_video(name: str, frames: list) -> None:
        imageio.mimwrite(out_dir / "videos" / f"{name}.mp4", [np.asarray(f) for f in frames], fps=args.video_fps)

    wait_for_server(args.host, args.port, args.wait_s)
    policy = websocket_client_policy.WebsocketClientPolicy(args.host, args.port, api_key=args.api_key)
    metadata = policy.get_server_metadata()
    logging.info("Server metadata: %s", metadata)
    if args.rtc != "none" and args.rtc not in metadata.get("rtc_modes", []):
        raise SystemExit(f"--rtc {args.rtc}: the server serves RTC modes {metadata.get('rtc_modes', [])}")
    config = eval_loop.EvalConfig(
        max_steps=args.max_steps or eval_loop.MAX_STEPS[args.task_suite_name],
        replan_steps=args.replan_steps,
        num_steps_wait=args.num_steps_wait,
        num_trials_per_task=args.num_trials_per_task,
        draw_kept_patches=args.draw_kept_patches,
        run_async=args.run_async,
        rtc=args.rtc,
    )
    results = eval_loop.evaluate_suite(tasks, make_env, policy, config, preprocess_image, save_video)
    summary = {"suite": args.task_suite_name, "task_ids": task_ids, **eval_loop.summary(results)}
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    logging.info(
        "Success rate %.3f (%d/%d); results in %s",
        summary["success_rate"],
        summary["successes"],
        summary["episodes"],
        out_dir,
    )


if __name__ == "__main__":
    # robosuite, LIBERO and their dependencies warn about their own deprecated APIs on import: noise to a user here.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main(tyro.cli(Args))
