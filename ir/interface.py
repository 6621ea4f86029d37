"""What a model takes: its inputs' names, dtypes and shapes, and the values and sizes it computes.

Manifests and feed checks are made from these. Token ids index an embedding table: an id
outside [-rows, rows - 1] is undefined (`index_ranges`). And a symbolic dim has a largest size
when the graph reads a constant table with it (`dim_limits`): `Slice(table, 0, sequence)` over
a constant of 512 rows (BERT's position ids) and `Gather(table, Range(0, sequence))` over one
of 512 rows give 512 rows when `sequence` is larger, and the tensors they meet downstream have
`sequence` rows: ONNX Runtime stops with a broadcast error, and a compiled library reads past
its buffers. These bounds come from the graph alone (`ir/shapes.py` tracks the symbolic
values), so that a runtime can refuse a feed that is too large before any kernel runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from nlpress.ir.errors import NlpressError
from nlpress.ir.shapes import Info, Shapes, analyze
from nlpress.ir.symbolic import Dim, Poly, add, sub


@dataclass(frozen=True)
class DimLimit:
    """An upper bound on a symbolic dim of the graph inputs.

    Attributes:
        dim: The dim's name, e.g. "sequence".
        maximum: The largest size the graph computes correctly.
        reason: What sets it, e.g. "node 'embed' slices the constant 'pos' of 512 along axis 1".
    """

    dim: str
    maximum: int
    reason: str

    def as_dict(self) -> dict[str, object]:
        """The manifest's form: {"max": 512, "reason": "..."}."""
        return {"max": self.maximum, "reason": self.reason}


def input_entries(proto: onnx.ModelProto) -> list[dict[str, Any]]:
    """The graph inputs' manifest entries; integer inputs that index a table get "index_range"."""
    ranges = index_ranges(proto)
    entries = []
    for value in graph_inputs(proto):
        entry = value_entry(value)
        if value.name in ranges:
            entry["index_range"] = list(ranges[value.name])
        entries.append(entry)
    return entries


def index_ranges(proto: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """The valid values of graph inputs used as Gather indices into a constant table.

    An index out of [-rows, rows - 1] is undefined in ONNX; TVM's compiled gather reads outside
    the table (or crashes), so the runtime checks feeds against these bounds first.
    """
    tables = {i.name: list(i.dims) for i in proto.graph.initializer}
    inputs = {v.name for v in graph_inputs(proto)}
    origin = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "Cast"}
    ranges: dict[str, tuple[int, int]] = {}
    for node in proto.graph.node:
        if node.op_type != "Gather" or node.input[0] not in tables:
            continue
        source = node.input[1]
        while source in origin:
            source = origin[source]
        if source not in inputs:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        dims = tables[node.input[0]]
        rows = int(dims[axis if axis >= 0 else axis + len(dims)])
        low, high = ranges.get(source, (-rows, rows - 1))
        ranges[source] = (max(low, -rows), min(high, rows - 1))
    return ranges


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that are not initializers."""
    initializers = {i.name for i in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in initializers]


def value_entry(value: onnx.ValueInfoProto) -> dict[str, Any]:
    """A tensor's name, numpy dtype name and dims (ints, dim names, or None when unnamed)."""
    if value.type.WhichOneof("value") != "tensor_type" or not value.type.tensor_type.elem_type:
        kind = value.type.WhichOneof("value") or "untyped"
        raise NlpressError(
            f"{value.name}: a {kind.replace('_type', '')} value; nlpress takes and gives tensors"
        )
    tensor_type = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return {"name": value.name, "dtype": np.dtype(dtype).name, "shape": dims}


# A bound found at one node: `expression <= bound`, and why.
Bound = tuple[Dim, int, str]


def dim_limits(graph: gs.Graph) -> dict[str, DimLimit]:
    """The bound of every symbolic input dim that indexes a constant table, by dim name."""
    names = {d for t in graph.inputs for d in (t.shape or ()) if isinstance(d, str)}
    if not names:
        return {}
    shapes = analyze(graph)
    maxima = _index_maxima(graph, shapes)
    limits: dict[str, DimLimit] = {}
    for node in graph.nodes:
        rule = _LIMIT_RULES.get(node.op)
        for expression, bound, reason in rule(node, shapes, maxima) if rule else ():
            found = _solve(expression, bound, names)
            if found is None:
                continue
            dim, maximum = found
            if dim not in limits or maximum < limits[dim].maximum:
                limits[dim] = DimLimit(dim, maximum, reason)
    return dict(sorted(limits.items()))


def _solve(expression: Dim, bound: int, names: set[str]) -> tuple[str, int] | None:
    """`c*dim + k <= bound` as `dim <= floor((bound - k) / c)`, for one named dim and c > 0."""
    if not isinstance(expression, Poly):
        return None
    offset, symbol, coefficient = 0, None, 0
    for mono, coef in expression.terms:
        if not mono:
            offset = coef
        elif len(mono) == 1 and symbol is None and mono[0] in names and coef > 0:
            symbol, coefficient = mono[0], coef
        else:
            return None
    if symbol is None:
        return None
    return symbol, (bound - offset) // coefficient


# ---- the largest value of index tensors made from a Range -----------------------------------

Maxima = dict[int, Dim]
MaximumRule = Callable[[gs.Node, list[Info], list[Dim | None]], Dim | None]


def _index_maxima(graph: gs.Graph, shapes: Shapes) -> Maxima:
    """The largest value of each integer tensor computed from a Range, where it is known."""
    maxima: Maxima = {}
    for node in graph.nodes:
        rule = _MAXIMUM_RULES.get(node.op)
        if rule is None or not node.outputs:
            continue
        ins = [shapes[t] for t in node.inputs]
        known = [maxima.get(id(t)) for t in node.inputs]
        found = rule(node, ins, known)
        if found is not None:
            maxima[id(node.outputs[0])] = found
    return maxima


def _max_range(node: gs.Node, ins: list[Info], known: list[Dim | None]) -> Dim | None:
    start, limit, delta = (i.value[0] if i.value and len(i.value) == 1 else None for i in ins)
    if not isinstance(start, int) or not isinstance(delta, int) or delta <= 0:
        return None
    if limit is None or isinstance(limit, int):
        return None
    return sub(limit, 1)


def _max_same(node: gs.Node, ins: list[Info], known: list[Dim | None]) -> Dim | None:
    return known[0] if known else None


def _max_add(node: gs.Node, ins: list[Info], known: list[Dim | None]) -> Dim | None:
    for side, other in ((0, 1), (1, 0)):
        value = ins[other].value
        if known[side] is not None and value and len(value) == 1 and isinstance(value[0], int):
            return add(known[side], value[0])  # type: ignore[arg-type]
    return None


_MAXIMUM_RULES: dict[str, MaximumRule] = {
    "Range": _max_range,
    "Add": _max_add,
    **dict.fromkeys(
        ["Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Tile"],
        _max_same,
    ),
}


# ---- the nodes that read a constant table ----------------------------------------------------

LimitRule = Callable[[gs.Node, Shapes, Maxima], Iterator[Bound]]


def _slice_bounds(node: gs.Node, shapes: Shapes, maxima: Maxima) -> Iterator[Bound]:
    """Slice(table, start, end) with a symbolic end: the end may not pass the table's size."""
    table = _constant(node.inputs[0])
    if table is None or len(node.inputs) < 3:
        return
    values = [shapes[t].value if t.name else None for t in node.inputs[1:5]]
    starts, ends = values[0], values[1]
    if starts is None or ends is None or len(starts) != len(ends):
        return
    axes = values[2] if len(values) > 2 and values[2] is not None else range(len(starts))
    steps = values[3] if len(values) > 3 and values[3] is not None else (1,) * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if not (isinstance(start, int) and isinstance(axis, int) and step == 1):
            continue
        if not isinstance(end, Poly) or start < 0:
            continue
        axis = axis + table.ndim if axis < 0 else axis
        size = int(table.shape[axis])
        yield end, size, _reason(node, node.inputs[0], size, axis)


def _gather_bounds(node: gs.Node, shapes: Shapes, maxima: Maxima) -> Iterator[Bound]:
    """Gather(table, indices from a Range): the largest index must be a row of the table."""
    table = _constant(node.inputs[0])
    largest = maxima.get(id(node.inputs[1])) if len(node.inputs) > 1 else None
    if table is None or largest is None:
        return
    axis = int(node.attrs.get("axis", 0))
    axis = axis + table.ndim if axis < 0 else axis
    size = int(table.shape[axis])
    yield largest, size - 1, _reason(node, node.inputs[0], size, axis)


def _constant(tensor: gs.Tensor) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is not None and producer.op == "Constant" and "value" in producer.attrs:
        return np.asarray(producer.attrs["value"].values)
    return None


def _reason(node: gs.Node, tensor: gs.Tensor, size: int, axis: int) -> str:
    rows = "rows" if axis == 0 else f"entries along axis {axis}"
    return f"node {node.name!r} ({node.op}) reads the constant {tensor.name!r} of {size} {rows}"


_LIMIT_RULES: dict[str, LimitRule] = {"Slice": _slice_bounds, "Gather": _gather_bounds}
