"""The RTC experiment's report: per execution arm and delay, success pooled over seeds with its Wilson interval,
episode length, control steps to success and the discontinuity at and between chunk boundaries; per delay and
asynchronous arm, the paired per-seed difference in success against synchronous execution (training seeds as the
unit) and the per-seed boundary ratio to naive async; and the plot of success and boundary discontinuity against
delay. Results of different training steps are refused, not mixed."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from openpi.envs.rollout import wilson_interval
from openpi.shared.results_file import write_run
from research.paired import paired_difference, verdict
from research.rtc.arms import ACTION_HORIZON, EXECUTION_ARMS, MAX_DELAY, REPLAN_STEPS

_NAME = re.compile(r"(?P<arm>.+)_d(?P<delay>\d+)_seed(?P<seed>\d+)")


def read_results(results_dir: Path) -> list[tuple[Path, dict]]:
    """Every ``{arm}_d{delay}_seed{seed}.json`` of a known execution arm in ``results_dir``, read, in name order."""
    paths = [path for path in sorted(results_dir.glob("*.json")) if _arm_of(path) in EXECUTION_ARMS]
    return [(path, json.loads(path.read_text())) for path in paths]


def seed_of(path: Path) -> int:
    """The (training and evaluation) seed a result file is named for."""
    return int(_NAME.fullmatch(path.stem)["seed"])


def load(results_dir: Path) -> dict[tuple[str, int], list[dict]]:
    """Each (arm, delay)'s results in seed order; a ValueError names the files when their training steps differ."""
    results = read_results(results_dir)
    by_steps: dict[object, list[str]] = {}
    for path, result in results:
        by_steps.setdefault(result.get("train_steps"), []).append(path.name)
    if len(by_steps) > 1:
        runs = "; ".join(f"{steps} steps: {', '.join(names)}" for steps, names in by_steps.items())
        raise ValueError(f"{results_dir} mixes policies of different training steps ({runs}); keep one run's results")
    cells: dict[tuple[str, int], list[dict]] = {}
    for path, result in results:
        match = _NAME.fullmatch(path.stem)
        cells.setdefault((match["arm"], int(match["delay"])), []).append({**result, "seed": int(match["seed"])})
    return {key: sorted(value, key=lambda r: r["seed"]) for key, value in cells.items()}


def _arm_of(path: Path) -> str | None:
    match = _NAME.fullmatch(path.stem)
    return match["arm"] if match else None


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


def paired_table(cells: dict[tuple[str, int], list[dict]]) -> list[str]:
    """Per delay and asynchronous arm: success minus ``sync``'s on each shared seed with a 95% t-interval over the
    seeds, and each seed's boundary discontinuity over naive async's (rows need two seeds shared with ``sync``)."""
    rows = []
    for delay in sorted({delay for _, delay in cells}):
        sync = {r["seed"]: r["success_rate"] for r in cells.get(("sync", delay), [])}
        naive = {r["seed"]: r.get("boundary_discontinuity") for r in cells.get(("naive_async", delay), [])}
        for arm in EXECUTION_ARMS:
            if arm == "sync" or (arm, delay) not in cells:
                continue
            diff = paired_difference({r["seed"]: r["success_rate"] for r in cells[arm, delay]}, sync)
            if diff is None:
                continue
            ratios = [_ratio(r.get("boundary_discontinuity"), naive.get(r["seed"])) for r in cells[arm, delay]]
            rows.append(
                f"| {delay} | {arm} − sync | {', '.join(map(str, diff.seeds))} "
                f"| {', '.join(f'{d:+.2f}' for d in diff.differences)} "
                f"| {diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}] | {verdict(diff, arm, 'sync')} "
                f"| {'–' if arm == 'naive_async' else ', '.join(_f(x, 2) for x in ratios)} |"
            )
    if not rows:
        return []
    return [
        "",
        "Paired differences in success against synchronous execution at the same delay, seeds as the unit "
        "(each seed's arms share its policies and held-out scenes); 95% t-interval over the shared seeds. "
        '"not shown" is not "equal". Boundary / naive async: each seed\'s boundary discontinuity over that of naive '
        "async on the same seed and delay.",
        "",
        "| delay d | arm − sync | seeds | per seed | mean [95% t-CI] | verdict | boundary / naive async, per seed |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def _ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


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
    steps = next(iter(cells.values()))[0].get("train_steps", "?")
    header = [
        f"Tiny π0.5 on the shapes testbed (one object, horizon {ACTION_HORIZON}, a chunk asked for every "
        f"{REPLAN_STEPS} executed steps, trained RTC with delays up to {MAX_DELAY}); {steps} training steps per "
        f"policy; {_seeding(cells)}; "
        "success pooled over seeds with its Wilson 95% interval. Discontinuity: mean over episodes' steps of "
        "mean_dims |a_t - a_{t-1}| where the executed chunk switched (boundary) or not (within).",
        "",
        "```",
        command,
        "```",
        "",
    ]
    write_run(output, command, header + table(cells) + paired_table(cells))
    plot(cells, plot_path)


def _seeding(cells: dict[tuple[str, int], list[dict]]) -> str:
    """How the results' policies relate to their seeds (results without ``train_seed`` predate per-seed training)."""
    if all(r.get("train_seed") == r["seed"] for results in cells.values() for r in results):
        return "each seed trains its own policies and evaluates them on its own held-out scenes"
    return (
        "each seed's held-out scenes, but not every policy was trained with its result's seed (results without "
        "`train_seed` predate per-seed training: one policy per arm, training seed 0)"
    )


def _f(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
