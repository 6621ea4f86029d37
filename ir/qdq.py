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
