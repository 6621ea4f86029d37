"""Group-wise weights: DequantizeLinear(W_q, s, z, axis, block_size=g) kept as 4- or 8-bit codes.

ONNX (opset 21) stores a group-quantized constant as W[.., i, ..] = (W_q[.., i, ..] -
z[.., i // g, ..]) s[.., i // g, ..] along `axis`, with W_q int4, uint4, int8 or uint8. TVM's
importer takes neither 4-bit initializers nor block sizes, so the lowering:

- `widen_4bit`: makes each 4-bit initializer an 8-bit one holding the same integers;
- `convert_dequantize`: makes a blocked DequantizeLinear of constants a kernel named `KERNEL`
  over them, which `grouped_weight` reads back as unsigned codes u with a scale and an offset
  per group, W = u s - o (u = W_q + b and o = (z + b) s for the bias b that makes the codes
  unsigned: 8 for int4, 128 for int8). The panel matmul (`panels.py`) keeps the codes, two to
  a byte when they fit in 4 bits; anything else (a table's gather among them) computes the
  float constant from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from nlpress.targets import relax_match

# The name hint of the dequantizing kernel that `grouped_weight` recognises.
KERNEL = "nlpress_blocked_dequantize"
# Its PrimFunc's attributes: the group size and the grouped axis.
GROUP_ATTR = "nlpress.group"
AXIS_ATTR = "nlpress.group_axis"

# The 8-bit type that holds each 4-bit type's integers.
_WIDENED = {onnx.TensorProto.INT4: np.int8, onnx.TensorProto.UINT4: np.uint8}


def widen_4bit(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its 4-bit initializers stored as 8-bit ones (the same object if none)."""
    if not any(t.data_type in _WIDENED for t in proto.graph.initializer):
        return proto
    widened = onnx.ModelProto()
    widened.CopyFrom(proto)
    for tensor in widened.graph.initializer:
        if tensor.data_type in _WIDENED:
            values = numpy_helper.to_array(tensor).astype(_WIDENED[tensor.data_type])
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return widened


@dataclass(frozen=True)
class Grouped:
    """A constant W = u s - o along `axis` in groups of `group`.

    Attributes:
        codes: Unsigned codes u, uint8, W's shape.
        scale: float32, W's shape with ceil(W.shape[axis] / group) along `axis`.
        offset: As `scale`.
        axis: The grouped axis.
        group: The group size.
        bits: 4 when every code is below 16, else 8.
    """

    codes: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    axis: int
    group: int
    bits: int


def grouped(
    q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, group: int
) -> Grouped:
    """The codes, scale and offset of DequantizeLinear(q, scale, zero, axis, block_size=group)."""
    bias = 128 if q.dtype == np.int8 else 0
    if q.dtype == np.int8 and q.size and q.min() >= -8 and q.max() <= 7:
        bias = 8
    codes = (q.astype(np.int16) + bias).astype(np.uint8)
    zero_point = np.zeros(scale.shape) if zero is None else zero.astype(np.float64)
    offset = ((zero_point + bias) * scale.astype(np.float64)).astype(np.float32)
    return Grouped(codes, scale.astype(np.float32), offset, axis % q.ndim, group, _bits(codes))


def _bits(codes: np.ndarray) -> int:
    """4 when every code fits in 4 bits, else 8."""
    return 4 if codes.size and codes.max() < 16 else 8


def convert_dequantize(builder: Any, inputs: Any, attrs: dict[str, Any]) -> Any:
    """A blocked DequantizeLinear of constants as the `KERNEL` kernel; None for any other."""
    from tvm import relax

    block = int(attrs.get("block_size", 0))
    operands = [i for i in inputs if i is not None]
    if block <= 0 or not all(relax_match.is_const(i) for i in operands):
        return None
    q, scale, *zero = (i.value.numpy() for i in operands)
    if q.dtype not in (np.int8, np.uint8) or scale.dtype != np.float32:
        return None
    weight = grouped(q, scale, zero[0] if zero else None, int(attrs.get("axis", 1)), block)
    args = [relax.const(a) for a in (weight.codes, weight.scale, weight.offset)]
    call = builder.call_te(
        _te_dequantize,
        *args,
        axis=weight.axis,
        group=block,
        primfunc_name_hint=KERNEL,
        primfunc_attrs={GROUP_ATTR: block, AXIS_ATTR: weight.axis},
    )
    return builder.normalize(call)


def _te_dequantize(codes: Any, scale: Any, offset: Any, *, axis: int, group: int) -> Any:
    """W[index] = codes[index] s[g(index)] - o[g(index)], g dividing index[axis] by the group."""
    from tvm import te

    def value(*index: Any) -> Any:
        at = (*index[:axis], index[axis] // group, *index[axis + 1 :])
        return codes[index].astype("float32") * scale[at] - offset[at]

    return te.compute(codes.shape, value, name="dequantized")


def grouped_weight(expr: Any, values: dict[Any, Any], mod: Any) -> Grouped | None:
    """The Grouped constant that `expr` is (a call of a `KERNEL` kernel of `mod`), else None."""
    from tvm import relax

    if isinstance(expr, relax.Var) and expr in values:
        expr = values[expr]
    if relax_match.op_of(expr) != "relax.call_tir":
        return None
    gvar, args = expr.args[0], expr.args[1]
    attrs = getattr(mod[gvar], "attrs", None) if gvar in mod.get_global_vars() else None
    if attrs is None or GROUP_ATTR not in attrs:
        return None
    if not all(relax_match.is_const(a) for a in args):
        return None
    codes, scale, offset = (a.value.numpy() for a in args)
    axis, group = int(attrs[AXIS_ATTR]), int(attrs[GROUP_ATTR])
    return Grouped(codes, scale, offset, axis, group, _bits(codes))
