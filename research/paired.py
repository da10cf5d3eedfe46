"""Paired differences over training seeds: an arm minus a baseline per shared seed, with a Student t interval."""

from __future__ import annotations

import dataclasses
import math
import statistics

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond 30 the last one, slightly conservative).
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """A metric of an arm minus a baseline's, per training seed both have, with a t-interval over the seeds."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    low: float
    high: float


def paired_difference(arm: dict[int, float], baseline: dict[int, float]) -> PairedDifference | None:
    """``arm`` − ``baseline`` on their shared seeds (seed -> value); None with fewer than two shared seeds."""
    seeds = tuple(sorted(arm.keys() & baseline.keys()))
    if len(seeds) < 2:
        return None
    differences = tuple(arm[s] - baseline[s] for s in seeds)
    mean = statistics.mean(differences)
    half = T_975[min(len(seeds) - 1, len(T_975)) - 1] * statistics.stdev(differences) / math.sqrt(len(seeds))
    return PairedDifference(seeds, differences, mean, mean - half, mean + half)


def verdict(diff: PairedDifference, arm: str, baseline: str, lower_is_better: bool = False) -> str:
    """The better of ``arm`` and ``baseline`` where the interval excludes 0 ("ahead", or "faster" when lower is
    better), else "not shown"."""
    higher, lower = (arm, baseline) if diff.low > 0 else (baseline, arm) if diff.high < 0 else (None, None)
    better = lower if lower_is_better else higher
    return "not shown" if better is None else f"{better} {'faster' if lower_is_better else 'ahead'}"
