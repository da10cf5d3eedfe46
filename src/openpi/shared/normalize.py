"""Normalisation statistics: the ``norm_stats.json`` format, (un)normalisation and a streaming accumulator."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from openpi.shared.checkpoint_files import NORM_STATS_FILE, norm_stats_path

EPSILON = 1e-6


@dataclasses.dataclass(frozen=True, eq=False)
class NormStats:
    """Per-dimension statistics of one feature (e.g. ``state`` or ``actions``), as float32 arrays ``[D]``."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def __post_init__(self) -> None:
        lengths = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                value = np.asarray(value, dtype=np.float32).reshape(-1)
                object.__setattr__(self, field.name, value)
                lengths[field.name] = len(value)
        if len(set(lengths.values())) != 1:
            raise ValueError(f"NormStats fields must have the same length, got {lengths}")
        if (self.q01 is None) != (self.q99 is None):
            raise ValueError("NormStats q01 and q99 must be given together")

    @property
    def has_quantiles(self) -> bool:
        return self.q01 is not None and self.q99 is not None

    def to_json(self) -> dict[str, list[float]]:
        fields = {"mean": self.mean, "std": self.std, "q01": self.q01, "q99": self.q99}
        return {name: value.tolist() for name, value in fields.items() if value is not None}

    @classmethod
    def from_json(cls, data: dict[str, list[float]]) -> NormStats:
        missing = {"mean", "std"} - set(data)
        if missing:
            raise ValueError(f"Norm stats entry lacks {sorted(missing)}; has {sorted(data)}")
        return cls(mean=data["mean"], std=data["std"], q01=data.get("q01"), q99=data.get("q99"))


def serialize_json(stats: dict[str, NormStats]) -> str:
    """The ``norm_stats.json`` text: ``{"norm_stats": {key: {"mean", "std", "q01", "q99"}}}``."""
    return json.dumps({"norm_stats": {key: value.to_json() for key, value in stats.items()}}, indent=2)


def deserialize_json(text: str, source: str = "norm stats JSON") -> dict[str, NormStats]:
    """Parses and validates :func:`serialize_json`'s text; errors name ``source``.

    Raises:
        ValueError: not JSON, not ``{"norm_stats": {key: {"mean", "std", ...}}}``, or values that are not finite,
            negative standard deviations, or ``q01 > q99``.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source} is not valid JSON ({e}); recompute it with scripts/compute_norm_stats.py") from e
    entries = data.get("norm_stats") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f"{source} must hold {{'norm_stats': {{key: {{'mean', 'std', ...}}}}}}")
    stats = {}
    for key, value in entries.items():
        try:
            if not isinstance(value, dict):
                raise ValueError(f"an entry must be a dict of lists, got {type(value).__name__}")
            stats[key] = _checked(NormStats.from_json(value))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: norm stats {key!r} are invalid: {e}") from e
    return stats


def save(directory: str | Path, stats: dict[str, NormStats]) -> Path:
    """Writes ``directory/norm_stats.json`` atomically and returns its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = norm_stats_path(directory)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{NORM_STATS_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(serialize_json(stats))
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load(directory: str | Path) -> dict[str, NormStats]:
    """Reads and validates ``directory/norm_stats.json`` (see :func:`deserialize_json`).

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: naming the file, as :func:`deserialize_json`; or the file is not UTF-8 text.
    """
    path = norm_stats_path(directory)
    if not path.is_file():
        raise FileNotFoundError(f"Norm stats file not found: {path} (compute it with scripts/compute_norm_stats.py)")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); recompute it with scripts/compute_norm_stats.py") from e
    return deserialize_json(text, source=str(path))


def _checked(stats: NormStats) -> NormStats:
    for name in ("mean", "std", "q01", "q99"):
        value = getattr(stats, name)
        if value is not None and not np.isfinite(value).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    if (stats.std < 0).any():
        raise ValueError("std has negative values")
    if stats.has_quantiles and (stats.q01 > stats.q99).any():
        raise ValueError("q01 exceeds q99")
    return stats


def normalize(x: np.ndarray, stats: NormStats, use_quantiles: bool) -> np.ndarray:
    """Z-scores ``x`` or maps its q01..q99 range to [-1, 1].

    Stats apply to the leading ``min(len(stats), x.shape[-1])`` dims of the last axis; further dims pass through.
    """
    x = _as_float(x)
    dim = min(len(stats.mean), x.shape[-1])
    shift, scale = _affine(stats, use_quantiles, dim)
    out = x.copy()
    out[..., :dim] = (x[..., :dim] - shift) / scale
    if use_quantiles:
        out[..., :dim] = out[..., :dim] * 2.0 - 1.0
    return out


def unnormalize(x: np.ndarray, stats: NormStats, use_quantiles: bool) -> np.ndarray:
    """Inverse of :func:`normalize` with the same arguments."""
    x = _as_float(x)
    dim = min(len(stats.mean), x.shape[-1])
    shift, scale = _affine(stats, use_quantiles, dim)
    out = x.copy()
    head = (x[..., :dim] + 1.0) / 2.0 if use_quantiles else x[..., :dim]
    out[..., :dim] = head * scale + shift
    return out


def _as_float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


def _affine(stats: NormStats, use_quantiles: bool, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (shift, scale) so that the normalised value is ``(x - shift) / scale`` (before the quantile remap)."""
    if not use_quantiles:
        return stats.mean[:dim], stats.std[:dim] + EPSILON
    if not stats.has_quantiles:
        raise ValueError("Quantile normalisation needs q01 and q99 in the norm stats, but they are missing")
    return stats.q01[:dim], stats.q99[:dim] - stats.q01[:dim] + EPSILON


class RunningStats:
    """Accumulates mean/std exactly and q01/q99 approximately over batches ``[N, D]``.

    Quantiles come from per-dimension histograms whose range follows the running min/max; when the range grows, the
    existing counts are moved to the new bins by their bin centres. The error is a few bin widths (range / num_bins).
    """

    def __init__(self, num_bins: int = 5000) -> None:
        self.num_bins = num_bins
        self._count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._low: np.ndarray | None = None
        self._high: np.ndarray | None = None
        self._hist: np.ndarray | None = None

    def update(self, batch: np.ndarray) -> None:
        """Adds a batch ``[N, D]`` (any leading shape is flattened into N)."""
        batch = np.asarray(batch, dtype=np.float64)
        if batch.ndim == 0:
            raise ValueError("RunningStats.update expects an array [N, D], got a scalar")
        batch = batch.reshape(-1, batch.shape[-1])
        if batch.shape[0] == 0:
            return
        if self._mean is not None and batch.shape[1] != len(self._mean):
            raise ValueError(f"Batch has {batch.shape[1]} dims, earlier batches had {len(self._mean)}")
        self._update_moments(batch)
        self._update_histograms(batch)

    def get_statistics(self) -> NormStats:
        """Returns the statistics of everything seen so far."""
        if self._count < 2:
            raise ValueError(f"RunningStats needs at least 2 samples to compute statistics, got {self._count}")
        std = np.sqrt(self._m2 / self._count)
        return NormStats(mean=self._mean, std=std, q01=self._quantile(0.01), q99=self._quantile(0.99))

    def _update_moments(self, batch: np.ndarray) -> None:
        n = batch.shape[0]
        batch_mean = batch.mean(axis=0)
        batch_m2 = ((batch - batch_mean) ** 2).sum(axis=0)
        if self._mean is None:
            self._count, self._mean, self._m2 = n, batch_mean, batch_m2
            return
        total = self._count + n
        delta = batch_mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + batch_m2 + delta**2 * (self._count * n / total)
        self._count = total

    def _update_histograms(self, batch: np.ndarray) -> None:
        batch_low, batch_high = batch.min(axis=0), batch.max(axis=0)
        if self._hist is None:
            self._low, self._high = batch_low, batch_high
            self._hist = np.zeros((batch.shape[1], self.num_bins), dtype=np.float64)
        else:
            new_low, new_high = np.minimum(self._low, batch_low), np.maximum(self._high, batch_high)
            if np.any(new_low < self._low) or np.any(new_high > self._high):
                self._rebin(new_low, new_high)
        self._add_to_histograms(batch, np.ones_like(batch))

    def _rebin(self, new_low: np.ndarray, new_high: np.ndarray) -> None:
        centres = self._low[:, None] + (np.arange(self.num_bins) + 0.5) * self._bin_width()[:, None]
        old_hist = self._hist
        self._low, self._high = new_low, new_high
        self._hist = np.zeros_like(old_hist)
        self._add_to_histograms(centres.T, old_hist.T)

    def _add_to_histograms(self, values: np.ndarray, weights: np.ndarray) -> None:
        """Adds ``values [N, D]`` with ``weights [N, D]`` to the per-dimension histograms."""
        num_dims = values.shape[1]
        width = self._bin_width()
        safe_width = np.where(width > 0, width, 1.0)
        bins = np.floor((values - self._low) / safe_width).astype(np.int64)
        bins = np.clip(bins, 0, self.num_bins - 1)
        flat = bins + np.arange(num_dims) * self.num_bins
        counts = np.bincount(flat.ravel(), weights=weights.ravel(), minlength=num_dims * self.num_bins)
        self._hist += counts.reshape(num_dims, self.num_bins)

    def _bin_width(self) -> np.ndarray:
        return (self._high - self._low) / self.num_bins

    def _quantile(self, q: float) -> np.ndarray:
        cumulative = np.cumsum(self._hist, axis=1)
        # Counting samples from 1, np.quantile's linear rule puts quantile q at sample number q * (N - 1) + 1.
        target = q * (cumulative[:, -1] - 1) + 1
        index = np.argmax(cumulative >= target[:, None], axis=1)
        rows = np.arange(len(index))
        before = np.where(index > 0, cumulative[rows, np.maximum(index - 1, 0)], 0.0)
        in_bin = self._hist[rows, index]
        fraction = np.where(in_bin > 0, (target - before) / np.where(in_bin > 0, in_bin, 1.0), 0.0)
        return self._low + (index + fraction) * self._bin_width()
