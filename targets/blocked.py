"""Group-wise weights: DequantizeLinear(W_q, s, z, axis, block_size=g) kept as 4- or 8-bit codes.

ONNX (opset 21) stores a group-quantized constant as W[.., i, ..] = (W_q[.., i, ..] -
z[.., i // g, ..]) s[.., i // g, ..] along `axis`, with W_q int4, uint4, int8 or uint8. TVM's
importer takes neither 4-bit initializers nor block sizes, so the lowering:

- `widen_4bit`: makes each 4-bit initializer an 8-bit one holding the same integers;
- `convert_dequantize`: makes a blocked DequantizeLinear of constants a kernel named `KERNEL`
  over them, which `grouped_weight` reads back as unsigned codes u with a scale and an offset
  per group, W = u s - o (u = W_q + b and o = (z + b) s for the bias b that makes the codes
  unsigned: 8 for int4, 128 for int8). The panel matmul (`panels.py`) keeps the codes, two to
  a byte when they fit in 4 bits (`pack_nibbles`);
- `gather`: takes rows of a grouped 2-D constant (an embedding table, `take(W, ids, axis=0)`)
  in one kernel (`GATHER_KERNEL`) over its codes, two to a byte when they fit in 4 bits, that
  dequantizes only the gathered rows; the QDQ rewrite (`quantized.py`) emits it, so the table
  stays 4- or 8-bit in the library. Anything else computes the float constant from the codes.
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
# The name hint of the kernel that gathers and dequantizes rows of a grouped table.
GATHER_KERNEL = "nlpress_grouped_take"
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


def per_axis(
    q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int
) -> Grouped | None:
    """DequantizeLinear(q, scale, zero, axis) of a 2-D q, per-axis or per-tensor, as a Grouped.

    A scale per entry of `axis` is one group spanning the other axis (a per-row table's
    scales are groups of whole rows); a single scale is one group per column. None when the
    shapes are not those.
    """
    if q.ndim != 2 or q.dtype not in (np.int8, np.uint8) or scale.dtype != np.float32:
        return None
    if zero is not None and zero.size == 1:  # TVM's converter writes a missing one as 0
        zero = np.full(scale.shape, zero.reshape(()), dtype=zero.dtype)
    if zero is not None and zero.shape != scale.shape:
        return None
    if scale.size != 1 and scale.shape != (q.shape[axis],):
        return None
    if scale.size == 1:
        scale = np.full(q.shape[1], scale.reshape(()), dtype=scale.dtype)
        zero = None if zero is None else np.full(q.shape[1], zero.reshape(()), dtype=zero.dtype)
        axis = 1
    along = 1 - axis % 2
    scale = np.expand_dims(scale, along)
    zero = None if zero is None else np.expand_dims(zero, along)
    return grouped(q, scale, zero, along, q.shape[along])


def _bits(codes: np.ndarray) -> int:
    """4 when every code fits in 4 bits, else 8."""
    return 4 if codes.size and codes.max() < 16 else 8


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Codes below 16, two entries of axis 1 to a byte (even index low); axis 1 padded to even."""
    if codes.shape[1] % 2:
        codes = np.concatenate([codes, np.zeros_like(codes[:, :1])], axis=1)
    return np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def nibble(byte: Any, index: Any) -> Any:
    """The code at `index` in a byte holding 2i (low nibble) and 2i + 1 (high nibble)."""
    from tvm import tirx

    shift = tirx.Cast("uint8", (index % 2) * 4)
    return (byte >> shift) & tirx.const(15, "uint8")


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


def gather(builder: Any, table: Grouped, ids: Any) -> Any:
    """take(W, ids, axis=0) of a grouped 2-D constant W as one `GATHER_KERNEL` kernel.

    The kernel reads the gathered rows' codes (two to a byte when they fit in 4 bits) with
    their groups' scales and offsets, out[..., h] = u[r, h] s[g] - o[g] for r = ids[...].
    The ids must be in range (TVM's Gather converter makes negative ones positive).
    """
    from tvm import relax

    nibbles = table.bits == 4
    codes = pack_nibbles(table.codes) if nibbles else table.codes
    args = [relax.const(a) for a in (codes, table.scale, table.offset)]
    call = builder.call_te(
        _te_gather,
        *args,
        ids,
        width=int(table.codes.shape[1]),
        axis=table.axis,
        group=table.group,
        nibbles=nibbles,
        primfunc_name_hint=GATHER_KERNEL,
    )
    return builder.emit(call)


def _te_gather(
    codes: Any,
    scale: Any,
    offset: Any,
    ids: Any,
    *,
    width: int,
    axis: int,
    group: int,
    nibbles: bool,
) -> Any:
    """out[..., h] = u[r, h] s[g(r, h)] - o[g(r, h)] for r = ids[...], g grouping `axis`."""
    from tvm import te

    def value(*index: Any) -> Any:
        *at, h = index
        row = ids[tuple(at)]
        code = nibble(codes[row, h // 2], h) if nibbles else codes[row, h]
        where = (row // group, h) if axis == 0 else (row, h // group)
        return code.astype("float32") * scale[where] - offset[where]

    return te.compute((*ids.shape, width), value, name="gathered")
