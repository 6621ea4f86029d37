"""Activation ranges for quantize-insert, from bounded histograms of calibration data.

How values are stored once a range is chosen is the QDQ format (`ir.qdq`). Ranges come from
calibration statistics, collected on token rows (padding excluded, `calibration.token_rows`) in
a bounded histogram per tensor:

- `minmax`: the smallest and largest values seen.
- `percentile`: the p-th and (100 - p)-th percentiles of the values (two-sided).
- `entropy`: TensorRT's KL-divergence method on the histogram of |x|: the threshold T whose
  clipped distribution, quantized to 128 levels, loses the least information (KL(P || Q));
  the range is [max(min, -T), min(max, T)]. Exact zeros (ReLU's, masked positions) are left out
  of the comparison: every threshold represents them exactly, and their spike would otherwise
  pull T down.
- `mse`: the range [a min, b max] (a, b on a grid in (0, 1]) whose expected squared error (clip
  error of the values outside plus uniform rounding noise step^2 / 12 inside) is smallest.

The histogram has a fixed number of bins over [-L, L]; when a batch exceeds L, L doubles and
pairs of bins merge (exactly, as the edges line up), so memory stays bounded whatever the data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from nlpress.ir.qdq import ACTIVATION

Range = tuple[float, float]

BINS = 4096
ENTROPY_LEVELS = 128
ENTROPY_STEPS = 240
MSE_GRID = 64


@dataclass
class Histogram:
    """Counts of values in `bins` equal bins over [-limit, limit], and the extremes seen."""

    bins: int = BINS
    limit: float = 0.0
    low: float = 0.0
    high: float = 0.0
    zeros: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def add(self, values: np.ndarray) -> None:
        """Count `values` (any shape), widening the range by doublings when needed."""
        if values.size == 0:
            return
        low, high = float(np.min(values)), float(np.max(values))
        if not self.counts.size:
            self.counts = np.zeros(self.bins)
            self.limit = max(abs(low), abs(high), 1e-12)
            self.low, self.high = low, high
        self.low, self.high = min(self.low, low), max(self.high, high)
        while max(abs(low), abs(high)) > self.limit:
            self._double()
        self.counts += np.histogram(values, self.bins, (-self.limit, self.limit))[0]
        self.zeros += int(values.size - np.count_nonzero(values))

    def _double(self) -> None:
        merged = np.zeros(self.bins)
        np.add.at(merged, (self.bins // 2 + np.arange(self.bins)) // 2, self.counts)
        self.counts, self.limit = merged, 2 * self.limit

    @property
    def width(self) -> float:
        """The width of one bin."""
        return 2 * self.limit / self.bins

    @property
    def centers(self) -> np.ndarray:
        """The bin centres."""
        return -self.limit + (np.arange(self.bins) + 0.5) * self.width

    def absolute(self, zeros: bool = True) -> np.ndarray:
        """Counts of |x| in bins/2 bins over [0, limit] (exact zeros left out unless `zeros`)."""
        half = self.bins // 2
        counts = np.asarray(self.counts[half:] + self.counts[:half][::-1])
        if not zeros:
            counts[0] = max(counts[0] - self.zeros, 0)
        return counts


@dataclass
class TensorStats:
    """What calibration keeps of one activation tensor."""

    histogram: Histogram = field(default_factory=Histogram)
    channel_max: np.ndarray | None = None

    def add(self, rows: np.ndarray, channels: bool) -> None:
        """Fold in a batch of rows [n, k]."""
        self.histogram.add(rows)
        if channels and rows.size:
            peak = np.max(np.abs(rows), axis=0)
            self.channel_max = (
                peak if self.channel_max is None else np.maximum(self.channel_max, peak)
            )


def activation_range(
    histogram: Histogram, method: str, percentile: float = 99.99
) -> tuple[float, float]:
    """The clipping range [lo, hi] (lo <= 0 <= hi) of a tensor by calibration `method`."""
    if method not in RANGE_METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    low, high = min(histogram.low, 0.0), max(histogram.high, 0.0)
    if not histogram.counts.sum():
        return low, high
    return RANGE_METHODS[method](histogram, low, high, percentile)


def _minmax(_histogram: Histogram, low: float, high: float, _percentile: float) -> Range:
    return low, high


def _percentile_range(histogram: Histogram, low: float, high: float, percentile: float) -> Range:
    cumulative = np.cumsum(histogram.counts) / histogram.counts.sum()
    edges = -histogram.limit + np.arange(histogram.bins + 1) * histogram.width
    tail = 1.0 - percentile / 100.0
    lo = edges[int(np.searchsorted(cumulative, tail, side="left"))]
    hi = edges[int(np.searchsorted(cumulative, 1.0 - tail, side="left")) + 1]
    return max(low, min(float(lo), 0.0)), min(high, max(float(hi), 0.0))


def entropy_threshold(counts: np.ndarray, limit: float, levels: int = ENTROPY_LEVELS) -> float:
    """TensorRT's KL threshold on a histogram of |x| (`counts` bins over [0, limit])."""
    bins = len(counts)
    if bins <= levels:
        return limit
    step = max(1, (bins - levels) // ENTROPY_STEPS)
    best, best_kl = bins, np.inf
    for stop in range(levels, bins + 1, step):
        kl = _clipped_kl(counts, stop, levels)
        if kl < best_kl:
            best, best_kl = stop, kl
    return limit * best / bins


def _clipped_kl(counts: np.ndarray, stop: int, levels: int) -> float:
    reference = counts[:stop].astype(np.float64)
    reference[-1] += counts[stop:].sum()
    chunks = np.array_split(counts[:stop].astype(np.float64), levels)
    expanded = [np.where(c > 0, c.sum() / max(int(np.count_nonzero(c)), 1), 0.0) for c in chunks]
    candidate = np.concatenate(expanded)
    p_total, q_total = reference.sum(), candidate.sum()
    if p_total == 0 or q_total == 0:
        return np.inf
    p, q = reference / p_total, candidate / q_total
    support = p > 0
    if np.any(q[support] == 0):
        return np.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def _entropy_range(histogram: Histogram, low: float, high: float, _percentile: float) -> Range:
    threshold = entropy_threshold(histogram.absolute(zeros=False), histogram.limit)
    return max(low, -threshold), min(high, threshold)


def _mse_range(histogram: Histogram, low: float, high: float, _percentile: float) -> Range:
    nonzero = histogram.counts > 0
    centers, counts = histogram.centers[nonzero], histogram.counts[nonzero]
    grid = np.linspace(1.0 / MSE_GRID, 1.0, MSE_GRID)
    his = (high * grid).reshape(-1, 1)
    best, best_error = (low, high), np.inf
    for lo in low * grid:
        step = np.maximum(his - lo, 1e-30) / ACTIVATION.levels
        inside = (centers >= lo) & (centers <= his)
        error = (centers - np.clip(centers, lo, his)) ** 2 + np.where(inside, step**2 / 12, 0.0)
        totals = error @ counts
        pick = int(np.argmin(totals))
        if totals[pick] < best_error:
            best, best_error = (float(lo), float(his[pick, 0])), float(totals[pick])
    return best


# Each calibration method: (histogram, min, max, percentile) -> the range [lo, hi] it keeps.
RANGE_METHODS: Mapping[str, Callable[[Histogram, float, float, float], Range]] = {
    "minmax": _minmax,
    "percentile": _percentile_range,
    "entropy": _entropy_range,
    "mse": _mse_range,
}


def smooth_factors(channel_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's s_j = max|x_j|^alpha / max|W_j|^(1 - alpha), 1 where either is zero."""
    valid = (channel_max > 0) & (weight_max > 0)
    factors = np.ones_like(channel_max, dtype=np.float64)
    factors[valid] = channel_max[valid] ** alpha / weight_max[valid] ** (1 - alpha)
    return np.clip(factors, 1e-5, 1e5)
