"""Constant and shape folding: Constant nodes, known values, f(constants), symbolic targets."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir.evaluate import NOT_EVALUABLE, evaluate
from nlpress.ir.graph import constant_value, is_graph_output
from nlpress.ir.shapes import Info, Shapes
from nlpress.ir.symbolic import product
from nlpress.passes.fold.graph_utils import detach, has_subgraph, is_constant, unique


def constants_to_initializers(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Constant(value) -> initializer."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "Constant" or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        value = _constant_node_value(node)
        if value is None or is_graph_output(graph, out):
            continue
        detach(node)
        out.to_constant(value)
        count += 1
    return count


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        return constant_value(node.outputs[0])
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(list(attrs[key]), dtype=dtype)
    return None


def fold_known_values(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Shape(x), Gather(Shape(x), i), ... -> the constant the analysis computed."""
    count = 0
    for node in list(graph.nodes):
        if node.op == "Constant" or not node.outputs or has_subgraph(node):
            continue
        values = [shapes[t].known_value for t in node.outputs]
        if any(v is None for v in values) or any(is_graph_output(graph, t) for t in node.outputs):
            continue
        outputs = list(node.outputs)
        detach(node)
        for tensor, value in zip(outputs, values, strict=True):
            tensor.to_constant(value)
        count += 1
    return count


def fold_constants(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """f(constants) -> constant, evaluated in ONNX Runtime, within the size guard."""
    candidates = _candidates(graph, shapes, max_bytes)
    values = evaluate(graph, candidates)
    folded: set[int] = set()
    count = 0
    for node in candidates:
        inputs_ok = all(is_constant(t) or id(t) in folded for t in node.inputs)
        outs = [values.get(id(t)) for t in node.outputs]
        if not inputs_ok or any(v is None for v in outs):
            continue
        in_bytes = sum(_input_bytes(t, values) for t in node.inputs)
        if sum(v.nbytes for v in outs if v is not None) > max(max_bytes, in_bytes):
            continue
        folded.update(id(t) for t in node.outputs)
        _materialize(graph, node, outs)  # type: ignore[arg-type]
        count += 1
    return count


# Never evaluated: Constant (already a value), DequantizeLinear (quantized storage).
_KEPT = frozenset({"Constant", "DequantizeLinear"})


def _candidates(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> list[gs.Node]:
    chosen: set[int] = set()
    result = []
    for node in graph.nodes:
        if node.op in NOT_EVALUABLE or node.op in _KEPT or has_subgraph(node):
            continue
        if not node.outputs or node.domain not in (None, "", "ai.onnx", "com.microsoft"):
            continue
        if not all(is_constant(t) or id(t) in chosen for t in node.inputs):
            continue
        if any(_static_bytes(shapes[t]) > max(max_bytes, 1 << 28) for t in node.outputs):
            continue
        chosen.update(id(t) for t in node.outputs)
        result.append(node)
    return result


def _materialize(graph: gs.Graph, node: gs.Node, values: list[np.ndarray]) -> None:
    """Turn the outputs of `node` into constants (graph outputs are written by Constant nodes)."""
    outputs = list(node.outputs)
    detach(node)
    for tensor, value in zip(outputs, values, strict=True):
        if is_graph_output(graph, tensor):
            const = gs.Constant(f"{tensor.name}__value", np.asarray(value))
            graph.nodes.append(
                gs.Node("Constant", f"{tensor.name}__const", {"value": const}, outputs=[tensor])
            )
        else:
            tensor.to_constant(np.asarray(value))


def _static_bytes(info: Info) -> int:
    if info.shape is None or info.dtype is None:
        return 0
    size = product(info.shape)
    return size * info.dtype.itemsize if isinstance(size, int) else 0


def _input_bytes(tensor: gs.Tensor, values: Mapping[int, np.ndarray]) -> int:
    if isinstance(tensor, gs.Constant):
        return int(np.asarray(tensor.values).nbytes)
    value = values.get(id(tensor))
    return 0 if value is None else int(value.nbytes)


def symbolic_targets(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Reshape/Expand targets made of the input's dims -> constants (0 or 1 stand for them)."""
    count = 0
    for node in list(graph.nodes):
        if node.op not in ("Reshape", "Expand") or len(node.inputs) < 2:
            continue
        if is_constant(node.inputs[1]):
            continue
        source, target = _constant_target(node, shapes)
        if target is not None:
            name = unique(graph, f"{node.inputs[1].name}__folded")
            node.inputs = [source, gs.Constant(name, target)]
            count += 1
    return count


def _constant_target(node: gs.Node, shapes: Shapes) -> tuple[gs.Tensor, np.ndarray | None]:
    """A constant target, for the node's input or (Reshape) the start of its chain of reshapes."""
    source, target = node.inputs[0], shapes[node.inputs[1]].value
    if target is None:
        return source, None
    if node.op == "Expand":
        dims = _expand_target(shapes[source].shape, target)
        return source, None if dims is None else np.array(dims, dtype=np.int64)
    allowzero = bool(node.attrs.get("allowzero", 0))
    out = shapes[node.outputs[0]].shape
    while True:
        dims = _reshape_target(shapes[source].shape, target, out, allowzero)
        if dims is not None:
            return source, np.array(dims, dtype=np.int64)
        upstream = source.inputs[0] if source.inputs else None
        if upstream is None or upstream.op not in _REORDERING_FREE or not upstream.inputs:
            return source, None
        source = upstream.inputs[0]


# Ops whose output holds the input's elements in the same order (only the shape differs).
_REORDERING_FREE = frozenset(("Reshape", "Flatten", "Squeeze", "Unsqueeze"))


def _reshape_target(
    source: tuple[object, ...] | None,
    target: tuple[object, ...],
    out: tuple[object, ...] | None,
    allowzero: bool,
) -> list[int] | None:
    if source is None:
        return None
    dims: list[int | None] = []
    for i, d in enumerate(target):
        if d == -1 and out is not None and isinstance(out[i], int):
            dims.append(out[i])  # type: ignore[arg-type]
        elif isinstance(d, int) and not (d == 0 and not allowzero):
            dims.append(d)
        elif not allowzero and i < len(source) and source[i] == (out[i] if out else d):
            dims.append(0)
        else:
            dims.append(None)
    unresolved = dims.count(None)
    if unresolved > 1 or (unresolved == 1 and -1 in dims) or (unresolved and allowzero):
        return None
    return [-1 if d is None else d for d in dims]


def _expand_target(
    source: tuple[object, ...] | None, target: tuple[object, ...]
) -> list[int] | None:
    if source is None:
        return None
    offset = len(target) - len(source)
    dims: list[int] = []
    for i, d in enumerate(target):
        if isinstance(d, int):
            dims.append(d)
        elif i >= offset and source[i - offset] == d:
            dims.append(1)
        else:
            return None
    return dims
