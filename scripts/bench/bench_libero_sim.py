"""What the LIBERO simulator costs per episode on this machine: env build, reset, and a step with the cameras at the
evaluation's resolution vs at 8 px (what a step costs when rendering has almost no pixels to fill). Runs in the LIBERO
environment (examples/libero/setup_env.sh):

    examples/libero/.venv/bin/python scripts/bench/bench_libero_sim.py --steps 50

Prints a Markdown table and writes it to ``--output``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
import statistics
import sys
import time

import tyro

SETTLE_ACTION = [0.0] * 6 + [-1.0]


@dataclasses.dataclass
class Args:
    suite: str = "libero_spatial"
    task_id: int = 0
    steps: int = 50
    """Timed steps per camera size."""
    resolutions: tuple[int, ...] = (256, 8)
    output: pathlib.Path = pathlib.Path(__file__).parent / "results" / "libero_sim.md"


def measure(args: Args, resolution: int) -> dict[str, float]:
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    suite = benchmark.get_benchmark_dict()[args.suite]()
    task = suite.get_task(args.task_id)
    bddl = pathlib.Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    start = time.perf_counter()
    env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=resolution, camera_widths=resolution)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    env.reset()
    env.set_init_state(suite.get_task_init_states(args.task_id)[0])
    reset_s = time.perf_counter() - start
    env.step(SETTLE_ACTION)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        env.step(SETTLE_ACTION)
        times.append(time.perf_counter() - start)
    env.close()
    return {"build_s": build_s, "reset_s": reset_s, "step_ms": statistics.median(times) * 1000}


def main(args: Args) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("LIBERO_CONFIG_PATH", str(pathlib.Path(sys.prefix) / "libero-config"))
    rows = {resolution: measure(args, resolution) for resolution in args.resolutions}
    full = rows[args.resolutions[0]]["step_ms"]
    lines = [
        f"# LIBERO simulator cost ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, "
        f"{platform.machine()}, MUJOCO_GL={os.environ['MUJOCO_GL']})",
        "",
        "```",
        f"examples/libero/.venv/bin/python scripts/bench/bench_libero_sim.py --steps {args.steps}",
        "```",
        "",
        f"{args.suite} task {args.task_id}, two cameras (agent view + wrist) per step; median of {args.steps} steps.",
        "",
        "| cameras | env build (s) | reset + init state (s) | step (ms) | step / full-resolution step |",
        "|---|---|---|---|---|",
    ]
    for resolution, row in rows.items():
        lines.append(
            f"| {resolution} × {resolution} | {row['build_s']:.1f} | {row['reset_s']:.1f} | {row['step_ms']:.1f} "
            f"| {row['step_ms'] / full:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    print(table)


if __name__ == "__main__":
    main(tyro.cli(Args))
