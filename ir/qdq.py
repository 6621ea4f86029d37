"""The QDQ format: how quantize-insert stores quantized values and the lowering reads them.

A quantized tensor is stored as integers q with a float32 scale s and a zero point z, and read
back by DequantizeLinear as (q - z) s. A `Scheme` fixes the integer type and range, the zero-point
rule and the granularity (one scale per tensor, or one per index of an axis). Rounding is half
to even (as ONNX QuantizeLinear rounds), then clipped to the range.

- `WEIGHT`: a MatMul's constant W [k, n], int8 in [-127, 127], symmetric (z = 0, of the scale's
  shape), s = max|W[:, j]| / 127 per output column (axis 1), or one s over the matrix;
  DequantizeLinear(W_q, s, z, axis=1) is the MatMul's second input.
- `TABLE`: a constant table T [rows, d] read by Gathers (an embedding), int8 symmetric with one
  scale per row (axis 0), dequantized before the Gathers.
- `ACTIVATION`: a computed MatMul input, uint8 in [0, 255], asymmetric, one scale per tensor:
  s = (hi - lo) / 255, z = round(-lo / s) over a range [lo, hi] that holds 0. Static ranges give
  QuantizeLinear -> DequantizeLinear; dynamic ones DynamicQuantizeLinear -> DequantizeLinear.
- `SIGNED_ACTIVATION`: attention's second computed operand, int8 symmetric, one scale per tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scheme:
    """One quantized format.

    Attributes:
        dtype: The integer type stored.
        low: The smallest integer used.
        high: The largest integer used.
        symmetric: Whether the zero point is 0 (the range is [-absmax, absmax]).
        axis: The axis with one scale per index, or None for one scale per tensor.
    """

    dtype: type[np.integer]
    low: int
    high: int
    symmetric: bool
    axis: int | None

    @property
    def name(self) -> str:
        """The integer type's name, e.g. `int8`."""
        return np.dtype(self.dtype).name

    @property
    def levels(self) -> int:
        """The number of steps between the smallest and the largest integer."""
        return self.high - self.low

    def symmetric_scale(self, absmax: float) -> np.float32:
        """The scale that maps [-absmax, absmax] onto [-high, high] (1 for an all-zero tensor)."""
        return np.float32(absmax / self.high if absmax > 0 else 1.0)

    def asymmetric_params(self, lo: float, hi: float) -> tuple[np.float32, np.integer]:
        """Scale and zero point that map [lo, hi] (lo <= 0 <= hi) onto [low, high]."""
        span = hi - lo
        scale = np.float32(span / self.levels if span > 0 else 1.0)
        zero = np.clip(np.round(-lo / float(scale)), self.low, self.high)
        return scale, self.dtype(zero)

    def quantize(self, values: np.ndarray, per_axis: bool) -> tuple[np.ndarray, np.ndarray]:
        """Symmetric integers and float32 scales of `values`: one scale per index of `axis`."""
        magnitude = np.abs(values.astype(np.float64))
        axis = self.axis if per_axis else None
        absmax = (
            magnitude.max(axis=1 - axis, keepdims=True)
            if axis is not None
            else np.asarray(magnitude.max())
        )
        scale = np.where(absmax > 0, absmax / self.high, 1.0).astype(np.float32)
        q = np.clip(np.round(values / scale), -self.high, self.high).astype(self.dtype)
        return q, scale.reshape(-1) if axis is not None else scale


WEIGHT = Scheme(np.int8, -127, 127, symmetric=True, axis=1)
TABLE = Scheme(np.int8, -127, 127, symmetric=True, axis=0)
ACTIVATION = Scheme(np.uint8, 0, 255, symmetric=False, axis=None)
SIGNED_ACTIVATION = Scheme(np.int8, -127, 127, symmetric=True, axis=None)


@dataclass(frozen=True)
class Groups:
    """A constant quantized in groups of `group` along `axis`: values ~ (q - zero) scale.

    Attributes:
        q: The integers, the values' shape: int4/uint4 (ml_dtypes) for 4 bits, else int8/uint8.
        scale: float32, the values' shape with ceil(size / group) along `axis`.
        zero: Zero points of q's type and the scale's shape; None when symmetric (0).
        axis: The grouped axis.
        group: The group size; 0 for one scale per index of the other axis (per channel).
    """

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray | None
    axis: int
    group: int

    def dequantized(self) -> np.ndarray:
        """The values the integers stand for, in float32."""
        size = self.q.shape[self.axis]

        def expanded(p: np.ndarray) -> np.ndarray:
            if not self.group:  # one per index of the other axis
                return np.expand_dims(p.astype(np.float64), self.axis)
            repeated = np.repeat(p.astype(np.float64), self.group, axis=self.axis)
            return np.asarray(repeated.take(np.arange(size), axis=self.axis))

        zero = 0.0 if self.zero is None else expanded(self.zero)
        return np.asarray((self.q.astype(np.float64) - zero) * expanded(self.scale), np.float32)


# Shrinks of a group's range tried by `quantize_groups(clip=True)`; the least squared error wins.
CLIP_SHRINKS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def quantize_groups(
    values: np.ndarray, bits: int, group: int, axis: int, symmetric: bool, clip: bool
) -> Groups:
    """Quantize a 2-D constant to `bits` in groups of `group` along `axis` (0: whole axis).

    Symmetric groups use q in [-2^(b-1), 2^(b-1) - 1] with s = absmax / (2^(b-1) - 1);
    asymmetric ones q in [0, 2^b - 1] over [min(w, 0), max(w, 0)]. With `clip`, each group's
    range is shrunk by the factor of CLIP_SHRINKS that gives the least squared error.
    """
    import ml_dtypes

    size = values.shape[axis]
    width = group or size
    count = -(-size // width)
    moved = np.moveaxis(values.astype(np.float64), axis, 0)
    padded = np.pad(moved, [(0, count * width - size), (0, 0)], mode="edge")
    blocks = padded.reshape(count, width, -1)
    q, scale, zero, error = _rounded(blocks, bits, symmetric, 1.0)
    for shrink in CLIP_SHRINKS[1:] if clip else ():
        candidate = _rounded(blocks, bits, symmetric, shrink)
        better = candidate[3] < error
        q = np.where(better[:, None], candidate[0], q)
        scale, zero, error = (
            np.where(better, c, b) for c, b in zip(candidate[1:], (scale, zero, error), strict=True)
        )
    integers = np.moveaxis(q.reshape(count * width, -1)[:size], 0, axis)
    dtype = {
        (4, True): ml_dtypes.int4,
        (4, False): ml_dtypes.uint4,
        (8, True): np.int8,
        (8, False): np.uint8,
    }[bits, symmetric]
    shaped = [np.moveaxis(p, 0, axis) for p in (scale, zero)]
    if not group:  # one per index of the other axis
        shaped = [p.reshape(-1) for p in shaped]
    return Groups(
        integers.astype(np.int16).astype(dtype),
        shaped[0].astype(np.float32),
        None if symmetric else shaped[1].astype(np.int16).astype(dtype),
        axis,
        group,
    )


def _rounded(
    blocks: np.ndarray, bits: int, symmetric: bool, shrink: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integers [count, width, columns], scale, zero point and squared error [count, columns]."""
    scale, zero, low, high = _group_range(blocks, bits, symmetric, shrink)
    q = np.clip(np.round(blocks / scale) + zero, low, high)
    error = (((q - zero) * scale - blocks) ** 2).sum(axis=1)
    return q, scale[:, 0], zero[:, 0], error


def _group_range(
    blocks: np.ndarray, bits: int, symmetric: bool, shrink: float
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Scale, zero point and integer bounds of each group [count, 1, columns], float64."""
    if symmetric:
        high = 2 ** (bits - 1) - 1
        absmax = np.abs(blocks).max(axis=1, keepdims=True) * shrink
        scale = np.where(absmax > 0, absmax / high, 1.0)
        return scale, np.zeros_like(scale), -high - 1, high
    high = 2**bits - 1
    lo = np.minimum(blocks.min(axis=1, keepdims=True), 0.0) * shrink
    hi = np.maximum(blocks.max(axis=1, keepdims=True), 0.0) * shrink
    span = hi - lo
    scale = np.where(span > 0, span / high, 1.0)
    zero = np.clip(np.round(-lo / scale), 0, high)
    return scale, zero, 0, high
