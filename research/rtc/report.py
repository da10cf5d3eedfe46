"""The RTC experiment's report: per execution arm and delay, success pooled over seeds with its Wilson interval,
episode length, control steps to success and the discontinuity at and between chunk boundaries; and the plot of
success and boundary discontinuity against delay."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from openpi.envs.rollout import wilson_interval
from openpi.shared.results_file import write_run
from research.rtc.arms import ACTION_HORIZON, EXECUTION_ARMS, MAX_DELAY, REPLAN_STEPS

_NAME = re.compile(r"(?P<arm>.+)_d(?P<delay>\d+)_seed(?P<seed>\d+)")


def load(results_dir: Path) -> dict[tuple[str, int], list[dict]]:
    """Each (arm, delay)'s results in seed order."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for path in sorted(results_dir.glob("*.json")):
        match = _NAME.fullmatch(path.stem)
        if match and match["arm"] in EXECUTION_ARMS:
            result = {**json.loads(path.read_text()), "seed": int(match["seed"])}
            cells.setdefault((match["arm"], int(match["delay"])), []).append(result)
    return {key: sorted(value, key=lambda r: r["seed"]) for key, value in cells.items()}


def summary(results: list[dict]) -> dict[str, float | list[float] | None]:
    """Pooled success with its Wilson interval and the means over seeds of the episode figures."""
    successes = sum(r["successes"] for r in results)
    episodes = sum(r["episodes"] for r in results)

    def mean(key: str) -> float | None:
        values = [r[key] for r in results if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    return {
        "success": successes / max(1, episodes),
        "ci95": list(wilson_interval(successes, episodes)),
        "episodes": episodes,
        "per_seed": [r["success_rate"] for r in results],
        "mean_steps": mean("mean_steps"),
        "control_steps_to_success": mean("control_steps_to_success"),
        "boundary": mean("boundary_discontinuity"),
        "within": mean("within_chunk_discontinuity"),
    }


def table(cells: dict[tuple[str, int], list[dict]]) -> list[str]:
    lines = [
        "| arm | delay d | seeds | success [95% CI] | per seed | steps | control steps to success | boundary disc. "
        "| within-chunk disc. | boundary / naive async |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    delays = sorted({delay for _, delay in cells})
    for delay in delays:
        naive = cells.get(("naive_async", delay))
        naive_boundary = summary(naive)["boundary"] if naive else None
        for arm in EXECUTION_ARMS:
            if (arm, delay) not in cells:
                continue
            s = summary(cells[arm, delay])
            ratio = s["boundary"] / naive_boundary if s["boundary"] is not None and naive_boundary else None
            lines.append(
                f"| {arm} | {delay} | {len(cells[arm, delay])} | {s['success']:.3f} [{s['ci95'][0]:.3f}, "
                f"{s['ci95'][1]:.3f}] | {', '.join(f'{x:.2f}' for x in s['per_seed'])} | {_f(s['mean_steps'], 1)} "
                f"| {_f(s['control_steps_to_success'], 1)} | {_f(s['boundary'], 4)} | {_f(s['within'], 4)} "
                f"| {_f(ratio, 2)} |"
            )
    return lines


def plot(cells: dict[tuple[str, int], list[dict]], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for arm in EXECUTION_ARMS:
        delays = sorted(delay for a, delay in cells if a == arm)
        if not delays:
            continue
        stats = [summary(cells[arm, d]) for d in delays]
        success = [s["success"] for s in stats]
        errors = [[s["success"] - s["ci95"][0] for s in stats], [s["ci95"][1] - s["success"] for s in stats]]
        left.errorbar(delays, success, yerr=errors, marker="o", capsize=3, label=arm)
        right.plot(delays, [s["boundary"] for s in stats], marker="o", label=arm)
    left.set(xlabel="inference delay d (control steps)", ylabel="success (95% Wilson CI)", title="Success")
    right.set(xlabel="inference delay d (control steps)", ylabel="mean |a_t - a_{t-1}| at a chunk switch")
    right.set_title("Boundary discontinuity")
    left.legend()
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)


def write(results_dir: Path, output: Path, plot_path: Path, command: str) -> None:
    cells = load(results_dir)
    if not cells:
        return
    header = [
        f"Tiny π0.5 on the shapes testbed (one object, horizon {ACTION_HORIZON}, a chunk asked for every "
        f"{REPLAN_STEPS} executed steps, trained RTC with delays up to {MAX_DELAY}); each seed's held-out scenes; "
        "success pooled over seeds with its Wilson 95% interval. Discontinuity: mean over episodes' steps of "
        "mean_dims |a_t - a_{t-1}| where the executed chunk switched (boundary) or not (within).",
        "",
        "```",
        command,
        "```",
        "",
    ]
    write_run(output, command, header + table(cells))
    plot(cells, plot_path)


def _f(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
