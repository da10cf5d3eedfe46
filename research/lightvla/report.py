"""The closed-loop experiment's report: the Markdown table of every evaluation arm, the precondition, the paired
comparisons over seeds, the per-camera breakdown and the plot, written from the committed per-arm results."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from openpi.envs.rollout import wilson_interval
from openpi.shared import results_file
from research.lightvla.arms import (
    BUDGETS,
    COMPARISONS,
    DEFAULT_ARM,
    EVAL_ARMS,
    STEP_COMPARISONS,
    TRAINING_ARMS,
    UNPRUNED_ARMS,
    unpruned_reference,
)
from research.paired import paired_difference, verdict


def load(results_dir: Path) -> dict[str, list[dict]]:
    """Each evaluation arm's results in ``results_dir`` (``<arm>_seed<seed>.json``), in seed order, each with its
    ``seed``; files of arms :data:`EVAL_ARMS` does not define are not read."""
    results: dict[str, list[dict]] = {}
    for arm in EVAL_ARMS:
        paths = {int(path.stem.removeprefix(f"{arm}_seed")): path for path in results_dir.glob(f"{arm}_seed*.json")}
        for seed in sorted(paths):
            results.setdefault(arm, []).append({**json.loads(paths[seed].read_text()), "seed": seed})
    return results


def vision_gap_kept(results: dict[str, list[dict]], arm: str) -> str:
    """(arm − blind) / (reference − blind) with the arm's unpruned reference, pooled over the arm's seeds that also
    have both controls (named when that is not all of them); – without such a seed or without a gap."""
    reference = unpruned_reference(arm)
    arm_seeds = {r["seed"] for r in results[arm]}
    seeds = arm_seeds.intersection(*({r["seed"] for r in results.get(name, [])} for name in (reference, "blind")))
    if not seeds:
        return "–"
    rates = {name: _pooled_rate(results[name], seeds) for name in (arm, reference, "blind")}
    gap = rates[reference] - rates["blind"]
    if gap <= 0:
        return "–"
    share = f"{(rates[arm] - rates['blind']) / gap:.2f}"
    return share if seeds == arm_seeds else f"{share} (seeds {', '.join(map(str, sorted(seeds)))})"


def write(results_dir: Path, output: Path, plot: Path, command: str) -> None:
    """Writes the Markdown table of the results in ``results_dir`` into ``output`` as ``command``'s run section (the
    title and the reading around it are kept: :func:`openpi.shared.results_file.write_run`) and the plot to
    ``plot``."""
    results = load(results_dir)
    pooled = {arm: (sum(r["successes"] for r in rs), sum(r["episodes"] for r in rs)) for arm, rs in results.items()}
    rate = {arm: s / n for arm, (s, n) in pooled.items()}
    lines = header(command, results)
    for arm, runs in results.items():
        successes, episodes = pooled[arm]
        low, high = wilson_interval(successes, episodes)
        per_seed = ", ".join(f"{r['success_rate']:.2f}" for r in runs)
        kept = _mean_of(runs, "kept_tokens_mean")
        ratio = _mean_of(runs, "kept_ratio_mean")
        swaps = [r["prompt_swap"] for r in runs if (r.get("prompt_swap") or {}).get("recall_after_swap") is not None]
        share = "–" if arm == "blind" else vision_gap_kept(results, arm)
        lines.append(
            f"| {arm} | {len(runs)} | {rate[arm]:.3f} [{low:.3f}, {high:.3f}] | {per_seed} | {share} "
            f"| {_fmt(kept, 1)} | {_fmt(ratio)} | {_fmt(_mean_of(runs, 'target_recall'))} "
            f"| {_fmt(_mean_of(runs, 'target_hit_rate'))} | {_fmt(_mean_of(runs, 'target_hit_rate_final'))} "
            f"| {_swap_recall(swaps)} | {_fmt(_mean_of(swaps, 'success_after_swap'))} "
            f"| {_fmt(latency_ratio(results, arm))} "
            f"| {_fmt(_mean_of(runs, 'train_train_minutes'), 1)} |"
        )
    lines += [
        "",
        *(precondition(results, reference) for reference in UNPRUNED_ARMS if reference in results),
        "",
        *camera_table(results),
        *comparison_table(results),
        *steps_table(results),
    ]
    if not output.is_file():
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(f"{TITLE}\n")
    results_file.write_run(output, command, lines)
    _plot(results, pooled, plot)
    if "default" in results:
        budget_plot(results, pooled, plot.with_name(f"{plot.stem}_budgets{plot.suffix}"))


def latency_ratio(results: dict[str, list[dict]], arm: str) -> float | None:
    """The arm's median inference latency over the unpruned policy's, per seed both measured, averaged over seeds."""
    unpruned = {r["seed"]: r.get("infer_ms_p50") for r in results.get("unpruned", [])}
    ratios = [
        r["infer_ms_p50"] / unpruned[r["seed"]]
        for r in results[arm]
        if r.get("infer_ms_p50") and unpruned.get(r["seed"])
    ]
    return statistics.mean(ratios) if ratios else None


def comparison_table(results: dict[str, list[dict]]) -> list[str]:
    """The paired comparisons, seeds as the unit: a difference counts only where its interval excludes 0."""
    lines = [
        "Paired differences in success, seeds as the unit (each seed's arms share their held-out scenes); "
        '95% t-interval over the shared seeds. With three seeds the interval is wide: "not shown" is not "equal".',
        "",
        "| arm − baseline | seeds | per seed | mean [95% t-CI] | verdict |",
        "|---|---|---|---|---|",
    ]
    return lines + _paired_rows(results, COMPARISONS, "success_rate", False, "{:+.2f}")


def steps_table(results: dict[str, list[dict]]) -> list[str]:
    """The paired comparisons of episode length (a failure counts the step limit), where they are measured."""
    rows = _paired_rows(results, STEP_COMPARISONS, "mean_steps", True, "{:+.1f}")
    if not rows:
        return []
    return [
        "",
        "Paired differences in mean steps per episode (a failure counts the step limit: fewer is faster and more "
        "often successful), seeds as the unit, 95% t-interval.",
        "",
        "| arm − baseline | seeds | per seed | mean [95% t-CI] | verdict |",
        "|---|---|---|---|---|",
        *rows,
    ]


def _paired_rows(
    results: dict[str, list[dict]],
    comparisons: tuple[tuple[str, str], ...],
    metric: str,
    lower_is_better: bool,
    number: str,
) -> list[str]:
    """One row per comparison with two shared seeds; the verdict names the better arm where the interval excludes 0
    ("ahead" in success, "faster" in steps)."""
    lines = []
    for arm, baseline in comparisons:
        values = [{r["seed"]: r[metric] for r in results.get(name, [])} for name in (arm, baseline)]
        diff = paired_difference(*values)
        if diff is None:
            continue
        per_seed = ", ".join(number.format(d) for d in diff.differences)
        interval = f"{number.format(diff.mean)} [{number.format(diff.low)}, {number.format(diff.high)}]"
        seeds = ", ".join(map(str, diff.seeds))
        better = verdict(diff, arm, baseline, lower_is_better)
        lines.append(f"| {arm} − {baseline} | {seeds} | {per_seed} | {interval} | {better} |")
    return lines


def camera_table(results: dict[str, list[dict]]) -> list[str]:
    """Per arm and seed, where the kept patches lie per camera (the results that carry the breakdown)."""
    rows = [
        f"| {arm} | {r['seed']} | {r['success_rate']:.2f} | {_fmt(r['target_recall'])} "
        f"| {_fmt(r.get('target_pixel_recall'))} | {_fmt(r['kept_share_image'])} "
        f"| {_fmt(r['target_patches_image'], 1)} | {_fmt(r['target_recall_image'])} "
        f"| {_fmt(r['kept_share_wrist_image'])} | {_fmt(r['target_in_view_wrist_image'])} "
        f"| {_fmt(r['target_patches_wrist_image'], 1)} | {_fmt(r['target_recall_wrist_image'])} "
        f"| {_fmt(r.get('target_far_share'))} | {_fmt(r.get('target_hit_rate_near'))} "
        f"| {_fmt(r.get('target_hit_rate_far'))} | {_fmt(r.get('target_recall_far'))} |"
        for arm, runs in results.items()
        for r in runs
        if r.get("kept_share_image") is not None
    ]
    if not rows:
        return []
    return [
        "Per camera (the results that carry the breakdown): each camera's share of the kept patches, "
        "and over the inferences where the target is in its view the patches it covers there and its recall (the "
        "third-person camera always sees it; the wrist camera only near it, 'in view'). Target recall pools both; "
        "pixel recall is the share of the target's pixels (both cameras) that lie in kept patches, so a patch the "
        "target only grazes counts for what it holds of it (– where a result predates it). "
        "Far: the share of inferences with the target's centre outside the wrist camera's view, where only the "
        "third-person camera shows the way; hit and recall on either side of that line.",
        "",
        "| arm | seed | success | target recall | pixel recall | third-person: kept share | target patches | recall "
        "| wrist: kept share | in view | target patches | recall | far | hit near | hit far | recall far |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def precondition(results: dict[str, list[dict]], reference: str = "unpruned") -> str:
    """The experiment's precondition for the arms on one unpruned policy, pooled over the seeds that have both
    controls and stated with them: without it no comparison against that policy is a finding."""
    name = "" if reference == "unpruned" else f" for the arms on `{reference}`"
    measured = {r["seed"] for r in results.get(reference, [])} & {r["seed"] for r in results.get("blind", [])}
    if not measured:
        return f"**Precondition{name}: not yet measured** (needs the {reference} and blind arms of one seed)."
    unpruned, blind = (_pooled_rate(results[arm], measured) for arm in (reference, "blind"))
    met = unpruned >= 0.8 and unpruned - blind >= 0.3
    verdict = "met" if met else "NOT MET: no comparison in this table is a finding about pruning"
    unmeasured = sorted({r["seed"] for runs in results.values() for r in runs} - measured)
    plural = "s" if len(unmeasured) > 1 else ""
    caveat = f"; not measured on seed{plural} {', '.join(map(str, unmeasured))}" if unmeasured else ""
    failing = _seeds_failing_precondition(results, measured, reference)
    if failing:
        caveat += f"; **not met on seed {', '.join(failing)}**, whose comparisons are not findings"
    return (
        f"**Precondition{name} ({reference} ≥ 0.80 success and ≥ 30 points above blind): {verdict}** "
        f"({reference} {unpruned:.2f}, blind {blind:.2f}, pooled over seeds {', '.join(map(str, sorted(measured)))}"
        f"{caveat})."
    )


def _pooled_rate(runs: list[dict], seeds: set[int]) -> float:
    """Success pooled over the episodes of the given seeds' runs."""
    kept = [r for r in runs if r["seed"] in seeds]
    return sum(r["successes"] for r in kept) / sum(r["episodes"] for r in kept)


def _seeds_failing_precondition(results: dict[str, list[dict]], seeds: set[int], reference: str) -> list[str]:
    """Each measured seed whose own unpruned (reference) and blind policies miss the precondition, with their rates."""
    unpruned = {r["seed"]: r["success_rate"] for r in results[reference]}
    blind = {r["seed"]: r["success_rate"] for r in results["blind"]}
    return [
        f"{seed} ({reference} {unpruned[seed]:.2f}, blind {blind[seed]:.2f})"
        for seed in sorted(seeds)
        if unpruned[seed] < 0.8 or unpruned[seed] - blind[seed] < 0.3
    ]


TITLE = "# Pruning on the shapes testbed, closed loop"


def header(command: str, results: dict[str, list[dict]]) -> list[str]:
    """The run's date, command and legend, and its table's column names."""
    runs = next(iter(results.values()), [{}])
    warm = "".join(
        f"; `{arm}` trains {r.get('train_steps', '?')} more from the final `{spec.warm_start}` weights of its seed "
        "(its minutes per seed are those steps')"
        for arm, spec in TRAINING_ARMS.items()
        if spec.warm_start
        for r in results.get(arm, [])[:1]
    )
    return [
        f"Run {time.strftime('%Y-%m-%d')} on a 2-core CPU machine.",
        "",
        "```",
        command,
        "```",
        "",
        f"{runs[0].get('episodes', '?')} held-out episodes per seed (scene seeds no training dataset draws from); "
        f"{runs[0].get('train_steps', '?')} training steps per arm{warm}. "
        "Success: pooled over the arm's seeds, Wilson 95% CI (an arm with fewer seeds is not comparable to the "
        "others' pooled rates; compare per seed). "
        "Vision gap kept = (arm − blind) / (unpruned − blind), each pooled over the arm's seeds that have both "
        "controls (in brackets when that is not all of them), where unpruned is the unpruned policy the arm's "
        "weights descend from (`unpruned_long` for the arms fine-tuned from it). "
        "Recall: fraction of the target's patches kept, per inference; hit: at least one kept; last hit: the same at "
        "each episode's last inference (in a success, the one before the close; – where a result predates it). "
        "Swap recall: recall on another object of the scene after the prompt names it (in brackets: before it was "
        "named, what a prompt-blind pruner would keep of it). "
        f"The `*_lightvla` configs' pruner is `{DEFAULT_ARM}` trained from scratch, `default` fine-tuned from the "
        "seed's `unpruned` (the mixing-tower testbed's registered recipe). Swap success: whole episodes with the other "
        "object named. Latency: median inference time over the unpruned policy's on the same seed, averaged over "
        "seeds; the evaluations run one at a time after the trainings but on a shared machine, so it is indicative: "
        "`scripts/bench/results/pruning.md` measures latency in one run.",
        "",
        "| arm | seeds | success [95% CI] | per seed | vision gap kept | kept patches | kept ratio | target recall "
        "| target hit | last hit | swap recall | swap success | latency vs unpruned | train min/seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]


def _swap_recall(swaps: list[dict]) -> str:
    """The prompt-swap recall, with the same object's recall before it was named where measured."""
    if not swaps:
        return "–"
    after = _fmt(_mean_of(swaps, "recall_after_swap"))
    before = _mean_of(swaps, "recall_other_before_swap")
    return after if before is None else f"{after} ({_fmt(before)})"


def _mean_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.mean(values) if values else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


# The budget plot's series: its name -> its evaluation arm at a kept share.
_SERIES = {
    "default (learned)": lambda share: f"default{BUDGETS[share]}",
    "random patches, the default's weights": lambda share: f"default{BUDGETS[share]}_random",
    "default, sampled gating": lambda share: f"default_sampled{BUDGETS[share]}",
    "training-free budget, unpruned weights": lambda share: f"budget{round(share * 100)}",
    "random patches, unpruned weights": lambda share: f"random{round(share * 100)}",
}


def budget_plot(results: dict[str, list[dict]], pooled: dict[str, tuple[int, int]], path: Path) -> None:
    """Success against the kept share of the patches (25%, 10%, 5%), learned against random, pooled over seeds with
    Wilson intervals; unpruned and blind as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for index, (name, arm_at) in enumerate(_SERIES.items()):
        points = [(share, arm_at(share)) for share in sorted(BUDGETS) if arm_at(share) in pooled]
        if not points:
            continue
        shares = [share * (1 + 0.02 * (index - 2)) for share, _ in points]  # a small offset per series
        rates = [pooled[arm][0] / pooled[arm][1] for _, arm in points]
        bounds = [wilson_interval(*pooled[arm]) for _, arm in points]
        errors = [
            [r - low for r, (low, _) in zip(rates, bounds, strict=True)],
            [high - r for r, (_, high) in zip(rates, bounds, strict=True)],
        ]
        ax.errorbar(shares, rates, yerr=errors, fmt="-o", capsize=4, label=name)
    for arm, color in (("unpruned", "green"), ("blind", "grey")):
        if arm in pooled:
            low, high = wilson_interval(*pooled[arm])
            ax.axhspan(low, high, color=color, alpha=0.2, label=f"{arm} (Wilson 95%)")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sorted(BUDGETS), [f"{share:.0%}" for share in sorted(BUDGETS)])
    ax.set_xlabel("kept share of the patches (serving budget)")
    ax.set_ylabel("closed-loop success on held-out scenes")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("Learned vs random patches: pooled seeds, Wilson 95% CI", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


_JITTER = 0.003  # the plot's horizontal offset between consecutive arms
_MARKERS = ("o", "s", "^", "D")


def _plot(results: dict[str, list[dict]], pooled: dict[str, tuple[int, int]], path: Path) -> None:
    """Success against the kept patch ratio, one point per arm (pooled, Wilson interval) and a ring per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for index, (arm, runs) in enumerate(results.items()):
        successes, episodes = pooled[arm]
        rate = successes / episodes
        low, high = wilson_interval(successes, episodes)
        ratio = _mean_of(runs, "kept_ratio_mean")
        x = 1.0 if ratio is None or arm in (*UNPRUNED_ARMS, "blind") else ratio
        x = (0.0 if arm == "blind" else x) + _JITTER * (index - len(results) / 2)  # spread arms at the same ratio
        color = plt.cm.tab20(index % 20)
        marker = _MARKERS[index // 20 % len(_MARKERS)]  # a colour repeats only with another marker
        label = f"{arm} ({len(runs)})"
        ax.errorbar(
            x,
            rate,
            yerr=[[max(0.0, rate - low)], [max(0.0, high - rate)]],
            fmt=marker,
            capsize=4,
            color=color,
            label=label,
        )
        successes_per_seed = [r["success_rate"] for r in runs]
        ax.scatter([x] * len(runs), successes_per_seed, s=14, marker=marker, facecolors="none", edgecolors=color)
    ax.set_xlabel(f"kept patch ratio (blind = 0, unpruned = 1; arms offset by up to ±{_JITTER * len(results) / 2:.2f})")
    ax.set_ylabel("closed-loop success on held-out scenes")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(-0.05, 1.1)
    ax.grid(alpha=0.3)
    ax.set_title("Success vs kept patches: pooled seeds, Wilson 95% CI; rings: single seeds", fontsize=10)
    ax.legend(title="arm (seeds)", fontsize=8, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the legend sits outside the axes
