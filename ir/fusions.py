"""Fusions of decomposed operators into single ONNX ops, matched on graph structure.

- `fuse_layer_norm`: ReduceMean/Sub/Pow/ReduceMean/Add(eps)/Sqrt/Div[/Mul(gamma)][/Add(beta)]
  -> LayerNormalization (opset 17+).
- `fuse_gelu`: x * 0.5 * (1 + Erf(x / sqrt(2))) in its exporters' orders -> Gelu (opset 20+).

Each matcher only fires when every intermediate tensor is read by the pattern alone, so the
rewrite removes the pattern and changes no other reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir.graph import constant_value, consumers, is_graph_output, producer


def _only_reader(graph: gs.Graph, tensor: gs.Tensor, op: str) -> gs.Node | None:
    readers = consumers(tensor)
    if len(readers) != 1 or readers[0].op != op or is_graph_output(graph, tensor):
        return None
    return readers[0]


def _same(a: object, b: object) -> bool:
    """Identity, as a call (so that type checkers do not narrow either side)."""
    return a is b


def _other(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    return b if a is tensor else a if b is tensor else None


def _scalar(tensor: gs.Tensor | None) -> float | None:
    value = None if tensor is None else constant_value(tensor)
    if value is None or value.size != 1 or value.dtype.kind != "f":
        return None
    return float(value.reshape(-1)[0])


def _reduce_axes(node: gs.Node) -> list[int] | None:
    if node.attrs.get("keepdims", 1) != 1:
        return None
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    axes = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    return None if axes is None else [int(a) for a in axes.reshape(-1)]


def _replace(graph: gs.Graph, old: Sequence[gs.Node], new: gs.Node, out: gs.Tensor) -> None:
    """Make `new` write `out` (the pattern's last tensor) and drop the pattern's nodes."""
    for node in old:
        node.inputs.clear()
        node.outputs.clear()
    new.outputs = [out]
    dead = {id(n) for n in old}
    graph.nodes = [n for n in graph.nodes if id(n) not in dead] + [new]


ShapeOf = Callable[[gs.Tensor], "tuple[object, ...] | None"]


def fuse_layer_norm(graph: gs.Graph, shape_of: ShapeOf) -> int:
    """Fuse every decomposed layer norm; `shape_of` gives a tensor's known (symbolic) shape."""
    count = 0
    for node in list(graph.nodes):
        if node.op == "ReduceMean" and node.outputs and _layer_norm_at(graph, node, shape_of):
            count += 1
    return count


def _layer_norm_at(graph: gs.Graph, mean: gs.Node, shape_of: ShapeOf) -> bool:
    x = mean.inputs[0]
    shape = shape_of(x)
    axes, rank = _reduce_axes(mean), None if shape is None else len(shape)
    if axes is None or rank is None or shape is None or not axes:
        return False
    axes = sorted(a + rank if a < 0 else a for a in axes)
    if axes != list(range(axes[0], rank)):
        return False
    sub = _only_reader(graph, mean.outputs[0], "Sub")
    if sub is None or sub.inputs[0] is not x or sub.inputs[1] is not mean.outputs[0]:
        return False
    diff = sub.outputs[0]
    readers = consumers(diff)
    pow_node = next((n for n in readers if n.op == "Pow"), None)
    div = next((n for n in readers if n.op == "Div"), None)
    if len(readers) != 2 or pow_node is None or div is None or div.inputs[0] is not diff:
        return False
    if pow_node.inputs[0] is not diff or _scalar(pow_node.inputs[1]) != 2.0:
        return False
    chain = _variance_chain(graph, pow_node, div, axes, rank)
    if chain is None or is_graph_output(graph, diff):
        return False
    nodes, eps = chain
    normalized = tuple(shape[axes[0] :])
    return _finish_layer_norm(graph, [mean, sub, pow_node, *nodes, div], x, normalized, eps)


def _variance_chain(
    graph: gs.Graph, pow_node: gs.Node, div: gs.Node, axes: list[int], rank: int
) -> tuple[list[gs.Node], float] | None:
    var = _only_reader(graph, pow_node.outputs[0], "ReduceMean")
    var_axes = None if var is None else _reduce_axes(var)
    if var is None or var_axes is None:
        return None
    if sorted(a + rank if a < 0 else a for a in var_axes) != axes:
        return None
    add = _only_reader(graph, var.outputs[0], "Add")
    eps = None if add is None else _scalar(_other(add, var.outputs[0]))
    if add is None or eps is None:
        return None
    sqrt = _only_reader(graph, add.outputs[0], "Sqrt")
    if sqrt is None:
        return None
    if (
        not _same(div, _only_reader(graph, sqrt.outputs[0], "Div"))
        or div.inputs[1] is not sqrt.outputs[0]
    ):
        return None
    return [var, add, sqrt], eps


def _finish_layer_norm(
    graph: gs.Graph, nodes: list[gs.Node], x: gs.Tensor, normalized: tuple[object, ...], eps: float
) -> bool:
    out = nodes[-1].outputs[0]
    scale = bias = None
    mul = _only_reader(graph, out, "Mul")
    if mul is not None and isinstance(_other(mul, out), gs.Constant):
        scale, out = _other(mul, out), mul.outputs[0]
        nodes.append(mul)
        add = _only_reader(graph, out, "Add")
        if add is not None and isinstance(_other(add, out), gs.Constant):
            bias, out = _other(add, out), add.outputs[0]
            nodes.append(add)
    if not _fits(scale, normalized) or (bias is not None and not _fits(bias, normalized)):
        return False
    axis = -len(normalized)
    inputs = [x, scale] if bias is None else [x, scale, bias]
    fused = gs.Node(
        "LayerNormalization",
        name=f"{nodes[-1].name}_layer_norm",
        attrs={"axis": axis, "epsilon": eps},
        inputs=inputs,
    )
    _replace(graph, nodes, fused, out)
    return True


def _fits(param: gs.Tensor | None, normalized: tuple[object, ...]) -> bool:
    """Whether a constant float scale/bias has exactly the normalized dims."""
    if not isinstance(param, gs.Constant):
        return False
    values = np.asarray(param.values)
    return values.dtype.kind == "f" and tuple(values.shape) == normalized


def fuse_gelu(graph: gs.Graph) -> int:
    """Fuse every erf-form GELU into Gelu(approximate="none")."""
    count = 0
    for node in list(graph.nodes):
        if node.op == "Erf" and node.outputs and _gelu_at(graph, node):
            count += 1
    return count


def _gelu_at(graph: gs.Graph, erf: gs.Node) -> bool:
    scaled = producer(erf.inputs[0])
    if scaled is None:
        return False
    if len(scaled.inputs) != 2 or scaled.op not in ("Div", "Mul"):
        return False
    x, const = scaled.inputs
    factor = _scalar(const)
    want = math.sqrt(2.0) if scaled.op == "Div" else 1 / math.sqrt(2.0)
    if factor is None or not math.isclose(factor, want, rel_tol=1e-6):
        return False
    if not _same(erf, _only_reader(graph, scaled.outputs[0], "Erf")):
        return False
    add = _only_reader(graph, erf.outputs[0], "Add")
    if add is None or _scalar(_other(add, erf.outputs[0])) != 1.0:
        return False
    match = _gelu_tail(graph, x, add.outputs[0])
    if match is None:
        return False
    tail, out = match
    fused = gs.Node("Gelu", name=f"{erf.name}_gelu", attrs={"approximate": "none"}, inputs=[x])
    _replace(graph, [scaled, erf, add, *tail], fused, out)
    return True


def _gelu_tail(
    graph: gs.Graph, x: gs.Tensor, one_plus: gs.Tensor
) -> tuple[list[gs.Node], gs.Tensor] | None:
    first = _only_reader(graph, one_plus, "Mul")
    if first is None:
        return None
    other = _other(first, one_plus)
    if other is x:  # (x * (1 + erf)) * 0.5
        second = _only_reader(graph, first.outputs[0], "Mul")
        half = None if second is None else _scalar(_other(second, first.outputs[0]))
        return ([first, second], second.outputs[0]) if second and half == 0.5 else None
    if _scalar(other) == 0.5:  # x * ((1 + erf) * 0.5)
        second = _only_reader(graph, first.outputs[0], "Mul")
        ok = second is not None and _other(second, first.outputs[0]) is x
        return ([first, second], second.outputs[0]) if ok and second else None
    half_node = producer(other) if other is not None else None  # (x * 0.5) * (1 + erf)
    if half_node is None or half_node.op != "Mul" or _other(half_node, x) is None:
        return None
    if _scalar(_other(half_node, x)) != 0.5 or len(consumers(other)) != 1:
        return None
    return [half_node, first], first.outputs[0]
