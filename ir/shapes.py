"""Symbolic shape and value propagation: every tensor's dtype, symbolic shape and small int value.

`analyze(graph)` walks a topologically sorted graph once. Shapes are tuples of dims (`int` or a
symbolic `Poly` over the graph inputs' dim names). Small integer tensors (shape vectors, indices,
scalars) also get their flat value, one dim per element (None where unknown), so that a chain
like `Shape -> Gather -> Unsqueeze -> Concat` yields `(batch, sequence, 12, 32)`. The common ops
have rules here; for any other op, ONNX shape inference (run on a copy without weight data)
supplies the shape, its unnamed dims becoming fresh symbols equal only to themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from nlpress.ir.graph import constant_value, opset_imports
from nlpress.ir.symbolic import (
    Dim,
    absorbs,
    add,
    div_exact,
    minimum,
    mul,
    nonnegative,
    product,
    sub,
    symbol,
)

log = logging.getLogger(__name__)

# Integer tensors with at most this many elements have their values tracked.
MAX_VALUE_SIZE = 64
# Weights bigger than this travel to ONNX shape inference as typed inputs, without data.
_LIGHT_BYTES = 4096
_BIG = 2**62

Shape = tuple[Dim, ...]
Value = tuple[Dim | None, ...]


@dataclass(frozen=True)
class Info:
    """What is known about one tensor: dtype, symbolic shape, and (small ints) its flat value."""

    dtype: np.dtype | None = None
    shape: Shape | None = None
    value: Value | None = None

    @property
    def known_value(self) -> np.ndarray | None:
        """The value as an array when every element and dim is a known int, else None."""
        if self.value is None or self.shape is None or self.dtype is None:
            return None
        if not all(isinstance(v, int) for v in self.value):
            return None
        if not all(isinstance(d, int) for d in self.shape):
            return None
        dims = [d for d in self.shape if isinstance(d, int)]
        return np.array(self.value, dtype=self.dtype).reshape(dims)


class Shapes:
    """The result of `analyze`: Info by tensor identity."""

    def __init__(self) -> None:
        self._infos: dict[int, Info] = {}
        self._keep: list[gs.Tensor] = []  # keeps ids valid while the analysis lives

    def __getitem__(self, tensor: gs.Tensor) -> Info:
        """The Info of `tensor` (empty when nothing is known)."""
        return self._infos.get(id(tensor), Info())

    def set(self, tensor: gs.Tensor, info: Info) -> None:
        """Record `info` for `tensor`."""
        self._infos[id(tensor)] = info
        self._keep.append(tensor)


def analyze(graph: gs.Graph) -> Shapes:
    """Propagate dtypes, symbolic shapes and small values through a topologically sorted graph."""
    fallback = _onnx_inference(graph)
    shapes = Shapes()
    for tensor in graph.inputs:
        shapes.set(tensor, _declared(tensor))
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            shapes.set(tensor, _constant_info(np.asarray(tensor.values)))
    for node in graph.nodes:
        _visit(node, shapes, fallback)
    return shapes


def _visit(node: gs.Node, shapes: Shapes, fallback: dict[str, Info]) -> None:
    ins = [shapes[t] if t.name else Info() for t in node.inputs]
    const = constant_value(node.outputs[0]) if node.op == "Constant" and node.outputs else None
    if const is not None:
        shapes.set(node.outputs[0], _constant_info(const))
        return
    rule = _RULES.get(node.op) if node.domain in (None, "", "ai.onnx") else None
    try:
        computed = rule(node, ins) if rule else None
    except (ValueError, IndexError, TypeError, ZeroDivisionError):
        computed = None
    for index, out in enumerate(node.outputs):
        guess = fallback.get(out.name, Info())
        shape = computed[index] if computed and index < len(computed) else None
        shape = shape if shape is not None else guess.shape
        dtype = guess.dtype if guess.dtype is not None else _dtype(out.dtype)
        if shape is not None:
            shape = tuple(_fresh(out, i) if d is None else d for i, d in enumerate(shape))
        value = _value(node, ins, shape, dtype) if index == 0 else None
        shapes.set(out, Info(dtype, shape, value))


def _fresh(tensor: gs.Tensor, index: int) -> Dim:
    return symbol(f"?{tensor.name}#{index}")


def _dtype(dtype: object) -> np.dtype | None:
    if dtype is None:
        return None
    try:
        if isinstance(dtype, int):
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype))
        return np.dtype(dtype)  # type: ignore[call-overload,no-any-return]
    except (TypeError, KeyError, ValueError):
        return None


def _declared(tensor: gs.Tensor) -> Info:
    shape = None
    if tensor.shape is not None:
        shape = tuple(
            d if isinstance(d, int) and d >= 0 else symbol(str(d)) if d else _fresh(tensor, i)
            for i, d in enumerate(tensor.shape)
        )
    return Info(_dtype(tensor.dtype), shape)


def _constant_info(array: np.ndarray) -> Info:
    value = None
    if array.dtype.kind in "biu" and array.size <= MAX_VALUE_SIZE:
        value = tuple(int(v) for v in array.reshape(-1))
    return Info(array.dtype, tuple(int(d) for d in array.shape), value)


def _value(
    node: gs.Node, ins: list[Info], shape: Shape | None, dtype: np.dtype | None
) -> Value | None:
    if dtype is None or dtype.kind not in "biu" or shape is None:
        return None
    size = product(shape)
    if not isinstance(size, int) or size > MAX_VALUE_SIZE:
        return None
    rule = _VALUE_RULES.get(node.op)
    try:
        result = rule(node, ins, size) if rule else None
    except (ValueError, IndexError, TypeError, ZeroDivisionError):
        return None
    return result if result is not None and len(result) == size else None


# ---- ONNX shape inference as the fallback ------------------------------------------------


def _onnx_inference(graph: gs.Graph) -> dict[str, Info]:
    try:
        proto = _light_model(graph)
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception as exc:  # inference is only a hint; any failure means "unknown"
        log.debug("ONNX shape inference failed: %s", exc)
        return {}
    result = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        result[value.name] = _value_info(value)
    return result


def _value_info(value: onnx.ValueInfoProto) -> Info:
    if not value.type.HasField("tensor_type"):
        return Info()
    tensor_type = value.type.tensor_type
    dtype = _dtype(tensor_type.elem_type) if tensor_type.elem_type else None
    if not tensor_type.HasField("shape"):
        return Info(dtype)
    dims: list[Dim] = []
    for i, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.dim_param:
            dims.append(symbol(dim.dim_param))
        else:
            dims.append(symbol(f"?{value.name}#{i}"))
    return Info(dtype, tuple(dims))


def _light_model(graph: gs.Graph) -> onnx.ModelProto:
    """The graph as a ModelProto in which big weights are typed inputs without data."""
    inputs = [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs]
    initializers = []
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant):
            continue
        if tensor.values.nbytes > _LIGHT_BYTES:
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
            inputs.append(onnx.helper.make_tensor_value_info(tensor.name, elem, tensor.shape))
        else:
            initializers.append(OnnxExporter.export_tensor_proto(tensor))
    nodes = [OnnxExporter.export_node(node) for node in graph.nodes]
    outputs = [OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs]
    body = onnx.helper.make_graph(nodes, "light", inputs, outputs, initializers)
    opsets = opset_imports(graph)
    return onnx.helper.make_model(body, opset_imports=opsets)


# ---- shape rules ----------------------------------------------------------------------------

ShapeRule = Callable[[gs.Node, list[Info]], Sequence[Shape | None] | None]


def broadcast(*shapes: Shape) -> tuple[Dim | None, ...]:
    """Multidirectional broadcast of symbolic shapes; None where the result is unknown."""
    rank = max(len(s) for s in shapes)
    result: list[Dim | None] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        result.append(_broadcast_dim(dims))
    return tuple(result)


def _broadcast_dim(dims: list[Dim]) -> Dim | None:
    rest = [d for d in dims if d != 1]
    if not rest:
        return 1
    first = rest[0]
    if all(d == first for d in rest):
        return first
    distinct = list(dict.fromkeys(rest))
    if len(distinct) == 2:
        a, b = distinct
        return a if absorbs(a, b) else b if absorbs(b, a) else None
    return None


def _same(node: gs.Node, ins: list[Info]) -> list[Shape | None]:
    return [ins[0].shape]


def _elementwise(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    shapes = [i.shape for i in ins]
    if not shapes or any(s is None for s in shapes):
        return None
    return [broadcast(*[s for s in shapes if s is not None])]  # type: ignore[list-item]


def _matmul(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    a, b = ins[0].shape, ins[1].shape
    if a is None or b is None or not a or not b:
        return None
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    batch = broadcast(a2[:-2], b2[:-2]) if len(a2) > 2 or len(b2) > 2 else ()
    out = [*batch, a2[-2], b2[-1]]
    if len(a) == 1:
        out.pop(-2)
    if len(b) == 1:
        out.pop(-1)
    return [tuple(out)]  # type: ignore[arg-type]


def _transpose(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    shape = ins[0].shape
    if shape is None:
        return None
    perm = node.attrs.get("perm") or list(reversed(range(len(shape))))
    return [tuple(shape[p] for p in perm)]


def _shape(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    shape = ins[0].shape
    if shape is None:
        return None
    return [(len(_shape_slice(node, shape)),)]


def _shape_slice(node: gs.Node, shape: Shape) -> Shape:
    start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
    rank = len(shape)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else min(max(end + rank if end < 0 else end, 0), rank)
    return shape[start:end]


def _scalar(node: gs.Node, ins: list[Info]) -> list[Shape | None]:
    return [()]


def _gather(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    data, indices = ins[0].shape, ins[1].shape
    if data is None or indices is None:
        return None
    axis = node.attrs.get("axis", 0)
    axis = axis + len(data) if axis < 0 else axis
    return [(*data[:axis], *indices, *data[axis + 1 :])]


def _axes(node: gs.Node, ins: list[Info], rank: int) -> list[int] | None:
    if "axes" in node.attrs:
        axes = list(node.attrs["axes"])
    elif len(ins) > 1 and ins[1].value is not None:
        axes = list(ins[1].value)
    else:
        return None
    if not all(isinstance(a, int) for a in axes):
        return None
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes)


def _unsqueeze(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    shape = ins[0].shape
    if shape is None:
        return None
    rank = len(shape) + (len(ins[1].value or ()) if len(ins) > 1 else len(node.attrs["axes"]))
    axes = _axes(node, ins, rank)
    if axes is None:
        return None
    dims = iter(shape)
    return [tuple(1 if i in axes else next(dims) for i in range(rank))]


def _squeeze(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    shape = ins[0].shape
    if shape is None:
        return None
    has_axes = "axes" in node.attrs or (len(ins) > 1 and node.inputs[1].name)
    if not has_axes:
        if not all(isinstance(d, int) for d in shape):
            return None
        return [tuple(d for d in shape if d != 1)]
    axes = _axes(node, ins, len(shape))
    if axes is None:
        return None
    return [tuple(d for i, d in enumerate(shape) if i not in axes)]


def _concat(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    shapes = [i.shape for i in ins]
    if any(s is None for s in shapes) or not shapes:
        return None
    first = shapes[0]
    assert first is not None
    axis = node.attrs["axis"]
    axis = axis + len(first) if axis < 0 else axis
    total: Dim = 0
    for s in shapes:
        total = add(total, s[axis])  # type: ignore[index]
    return [(*first[:axis], total, *first[axis + 1 :])]


def _reshape(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    source, target = ins[0].shape, ins[1].value
    if target is None:
        return None
    allowzero = node.attrs.get("allowzero", 0)
    dims: list[Dim | None] = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            dims.append(source[i] if source is not None and i < len(source) else None)
        else:
            dims.append(d)
    if -1 in dims:
        index = dims.index(-1)
        known = [d for i, d in enumerate(dims) if i != index]
        if source is None or any(d is None for d in known):
            dims[index] = None
        else:
            dims[index] = div_exact(product(source), product(known))  # type: ignore[arg-type]
    return [tuple(dims)]  # type: ignore[arg-type]


def _flatten(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    shape = ins[0].shape
    if shape is None:
        return None
    axis = node.attrs.get("axis", 1)
    axis = axis + len(shape) if axis < 0 else axis
    return [(product(shape[:axis]), product(shape[axis:]))]


def _expand(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    shape, target = ins[0].shape, ins[1].value
    if shape is None or target is None:
        return None
    if any(d is None for d in target):
        return [tuple(None for _ in range(max(len(shape), len(target))))]  # type: ignore[misc]
    return [broadcast(shape, target)]  # type: ignore[arg-type,list-item]


def _constant_of_shape(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    return [ins[0].value] if ins[0].value is not None else None  # type: ignore[list-item]


def _range(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    start, limit, delta = (i.value[0] if i.value else None for i in ins)
    if start is None or limit is None or delta is None:
        return None
    if isinstance(start, int) and isinstance(limit, int) and isinstance(delta, int):
        return [(max(0, -(-(limit - start) // delta)),)]
    return [(div_exact(sub(limit, start), delta),)]  # type: ignore[list-item]


def _slice(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    shape = ins[0].shape
    params = _slice_params(node, ins, None if shape is None else len(shape))
    if shape is None or params is None:
        return None
    dims: list[Dim | None] = list(shape)
    for start, end, axis, step in params:
        dims[axis] = _sliced_dim(shape[axis], start, end, step)
    return [tuple(dims)]  # type: ignore[arg-type]


def _slice_params(
    node: gs.Node, ins: list[Info], rank: int | None
) -> list[tuple[int, Dim | None, int, int]] | None:
    if rank is None:
        return None
    values = [ins[i].value if i < len(ins) and node.inputs[i].name else None for i in range(1, 5)]
    starts, ends, axes, steps = values
    if starts is None or ends is None:
        return None
    axes = axes if axes is not None else tuple(range(len(starts)))
    steps = steps if steps is not None else tuple(1 for _ in starts)
    every = [*starts, *axes, *steps]
    if not all(isinstance(v, int) for v in every) or any(e is None for e in ends):
        return None
    return [
        (int(s), e, int(a) + rank if int(a) < 0 else int(a), int(st))  # type: ignore[arg-type]
        for s, e, a, st in zip(starts, ends, axes, steps, strict=True)
    ]


def _sliced_dim(dim: Dim, start: int, end: Dim | None, step: int) -> Dim | None:
    if end is None:
        return None
    if not isinstance(end, int):
        if start == 0 and step == 1 and isinstance(dim, int) and nonnegative(end):
            return minimum(end, dim)
        return None
    if isinstance(dim, int):
        return len(range(*_clamped(dim, start, end, step)))
    if step == 1 and start == 0 and end >= 2**31 - 1:
        return dim
    return None


def _clamped(n: int, start: int, end: int, step: int) -> tuple[int, int, int]:
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        return min(max(start, 0), n), min(max(end, 0), n), step
    return min(max(start, -1), n - 1), min(max(end, -1), n - 1), step


def _reduce(node: gs.Node, ins: list[Info]) -> list[Shape | None] | None:
    shape = ins[0].shape
    if shape is None:
        return None
    axes = _axes(node, ins, len(shape))
    if axes is None:
        if len(ins) > 1 and node.inputs[1].name:
            return None
        if node.attrs.get("noop_with_empty_axes", 0):
            return [shape]
        axes = list(range(len(shape)))
    if node.attrs.get("keepdims", 1):
        return [tuple(1 if i in axes else d for i, d in enumerate(shape))]
    return [tuple(d for i, d in enumerate(shape) if i not in axes)]


_ELEMENTWISE = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Mod",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Xor",
    "BitShift",
    "Where",
    "PRelu",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
]
_UNARY = [
    "Identity",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Exp",
    "Log",
    "Sqrt",
    "Neg",
    "Abs",
    "Cast",
    "CastLike",
    "Softmax",
    "LogSoftmax",
    "IsNaN",
    "IsInf",
    "Not",
    "Sign",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Gelu",
    "Clip",
    "LeakyRelu",
    "Elu",
    "Selu",
    "HardSigmoid",
    "HardSwish",
    "Softplus",
    "Softsign",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "CumSum",
    "Mish",
    "Celu",
    "ThresholdedRelu",
    "BitwiseNot",
    "Dropout",
    "LayerNormalization",
    "Hardmax",
]

_RULES: dict[str, ShapeRule] = {
    **dict.fromkeys(_ELEMENTWISE, _elementwise),
    **dict.fromkeys(_UNARY, _same),
    **dict.fromkeys(
        ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1"],
        _reduce,
    ),
    "MatMul": _matmul,
    "Transpose": _transpose,
    "Shape": _shape,
    "Size": _scalar,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Expand": _expand,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "Slice": _slice,
}


# ---- value rules (small integer tensors) -----------------------------------------------------

ValueRule = Callable[[gs.Node, list[Info], int], Value | None]


def _v_shape(node: gs.Node, ins: list[Info], size: int) -> Value | None:
    return None if ins[0].shape is None else _shape_slice(node, ins[0].shape)


def _v_size(node: gs.Node, ins: list[Info], size: int) -> Value | None:
    return None if ins[0].shape is None else (product(ins[0].shape),)


def _v_same(node: gs.Node, ins: list[Info], size: int) -> Value | None:
    return ins[0].value


def _v_cast(node: gs.Node, ins: list[Info], size: int) -> Value | None:
    source = ins[0].dtype
    if source is None or source.kind not in "iu" or ins[0].value is None:
        return None
    target = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"]))
    if target.kind == "b":
        return tuple(
            None if v is None or not isinstance(v, int) else int(v != 0) for v in ins[0].value
        )
    known = [v for v in ins[0].value if isinstance(v, int)]
    if target.kind not in "iu" or any(np.array(known).astype(target) != np.array(known)):
        return None
    return ins[0].value


def _v_concat(node: gs.Node, ins: list[Info], size: int) -> Value | None:
    if any(i.value is None or i.shape is None or len(i.shape) != 1 for i in ins):
        return None
    return tuple(v for i in ins for v in i.value)  # type: ignore[union-attr]


def _v_gather(node: gs.Node, ins: list[Info], size: int) -> Value | None:
    data, indices = ins[0], ins[1]
    if data.value is None or data.shape is None or len(data.shape) != 1 or indices.value is None:
        return None
    n = len(data.value)
    picks = []
    for index in indices.value:
        if not isinstance(index, int) or not -n <= index < n:
            return None
        picks.append(data.value[index])
    return tuple(picks)


def _v_slice(node: gs.Node, ins: list[Info], size: int) -> Value | None:
    data = ins[0]
    if data.value is None or data.shape is None or len(data.shape) != 1:
        return None
    params = _slice_params(node, ins, 1)
    if params is None or len(params) != 1:
        return None
    start, end, _, step = params[0]
    if not isinstance(end, int):
        return None
    return tuple(data.value[i] for i in range(*_clamped(len(data.value), start, end, step)))


def _binary(op: Callable[[Dim, Dim], Dim | None]) -> ValueRule:
    def rule(node: gs.Node, ins: list[Info], size: int) -> Value | None:
        a, b = ins[0].value, ins[1].value
        if a is None or b is None or len(a) not in (1, size) or len(b) not in (1, size):
            return None
        pairs = zip(a * size if len(a) == 1 else a, b * size if len(b) == 1 else b, strict=True)
        return tuple(None if x is None or y is None else op(x, y) for x, y in pairs)

    return rule


def _int_div(a: Dim, b: Dim) -> Dim | None:
    if isinstance(a, int) and isinstance(b, int):
        return None if b == 0 else int(np.trunc(a / b)) if abs(a) < 2**52 else None
    return div_exact(a, b)


def _equal(a: Dim, b: Dim) -> Dim | None:
    if isinstance(a, int) and isinstance(b, int):
        return int(a == b)
    if a == b:
        return 1
    if (isinstance(b, int) and b < 0 and nonnegative(a)) or (
        isinstance(a, int) and a < 0 and nonnegative(b)
    ):
        return 0
    return None


def _v_where(node: gs.Node, ins: list[Info], size: int) -> Value | None:
    values = [i.value for i in ins]
    full: list[Value] = []
    for v in values:
        if v is None or len(v) not in (1, size):
            return None
        full.append(v * size if len(v) == 1 else v)
    cond, x, y = full
    return tuple(None if c is None else (a if c else b) for c, a, b in zip(cond, x, y, strict=True))


def _v_constant_of_shape(node: gs.Node, ins: list[Info], size: int) -> Value | None:
    fill = node.attrs.get("value")
    scalar = 0 if fill is None else np.asarray(fill.values).reshape(-1)[0]
    if np.asarray(scalar).dtype.kind not in "biu":
        return None
    return tuple(int(scalar) for _ in range(size))


def _v_range(node: gs.Node, ins: list[Info], size: int) -> Value | None:
    start, limit, delta = (i.value[0] if i.value else None for i in ins)
    if not all(isinstance(v, int) for v in (start, limit, delta)):
        return None
    return tuple(range(start, limit, delta))  # type: ignore[arg-type]


_VALUE_RULES: dict[str, ValueRule] = {
    "Shape": _v_shape,
    "Size": _v_size,
    "Identity": _v_same,
    "Reshape": _v_same,
    "Unsqueeze": _v_same,
    "Squeeze": _v_same,
    "Flatten": _v_same,
    "Cast": _v_cast,
    "Concat": _v_concat,
    "Gather": _v_gather,
    "Slice": _v_slice,
    "Add": _binary(add),
    "Sub": _binary(sub),
    "Mul": _binary(mul),
    "Div": _binary(_int_div),
    "Equal": _binary(_equal),
    "Where": _v_where,
    "ConstantOfShape": _v_constant_of_shape,
    "Range": _v_range,
}
