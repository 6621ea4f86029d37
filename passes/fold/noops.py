"""No-op removal: each op's check names the input its output equals, if any."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir.graph import bypass, constant_value, is_graph_output
from nlpress.ir.shapes import Info, Shapes


def remove_noops(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Identity, Dropout, same-type Cast, same-shape Reshape/Expand/..., x+0, x*1 -> x."""
    count = 0
    for node in list(graph.nodes):
        source = _noop_source(graph, node, shapes)
        if source is not None and bypass(graph, node, source, node.outputs[0]):
            count += 1
    return count


def _noop_source(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    if not node.outputs or not node.inputs or node.domain not in (None, "", "ai.onnx"):
        return None
    out = shapes[node.outputs[0]]
    check = _NOOP_CHECKS.get(node.op)
    if check is None:
        return None
    source = check(graph, node, shapes)
    if source is None or source is node.outputs[0]:
        return None
    if node.op in ("Identity", "Dropout"):
        return source
    info = shapes[source]
    return source if _same_tensor_type(info, out) else None


def _same_tensor_type(a: Info, b: Info) -> bool:
    return a.shape is not None and a.shape == b.shape and a.dtype is not None and a.dtype == b.dtype


def _first(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    return node.inputs[0]


def _dropout(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    if len(node.outputs) > 1 and (
        node.outputs[1].outputs or is_graph_output(graph, node.outputs[1])
    ):
        return None
    if len(node.inputs) > 2 and node.inputs[2].name:
        training = constant_value(node.inputs[2])
        if training is None or bool(training):
            return None
    return node.inputs[0]


def _transpose(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    perm = node.attrs.get("perm")
    return node.inputs[0] if perm is not None and list(perm) == sorted(perm) else None


def _concat(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    return node.inputs[0] if len(node.inputs) == 1 else None


def _slice(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    steps = node.inputs[4] if len(node.inputs) > 4 and node.inputs[4].name else None
    step_values = constant_value(steps) if steps is not None else np.ones(1)
    starts = constant_value(node.inputs[1])
    if step_values is None or starts is None or np.any(step_values != 1) or np.any(starts != 0):
        return None
    return node.inputs[0]


def _where(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    cond = constant_value(node.inputs[0])
    if cond is None or cond.size == 0:
        return None
    if cond.all():
        return node.inputs[1]
    return node.inputs[2] if not cond.any() else None


def _neutral(
    value: float, second_only: bool
) -> Callable[[gs.Graph, gs.Node, Shapes], gs.Tensor | None]:
    def check(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
        if len(node.inputs) != 2:
            return None
        for index in (1,) if second_only else (1, 0):
            const = constant_value(node.inputs[index])
            if const is not None and const.size and np.all(const == value):
                return node.inputs[1 - index]
        return None

    return check


def _cast(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    return node.inputs[0]


_NOOP_CHECKS: dict[str, Callable[[gs.Graph, gs.Node, Shapes], gs.Tensor | None]] = {
    "Identity": _first,
    "Dropout": _dropout,
    "Cast": _cast,
    "Reshape": _first,
    "Expand": _first,
    "Squeeze": _first,
    "Unsqueeze": _first,
    "Flatten": _first,
    "Transpose": _transpose,
    "Concat": _concat,
    "Slice": _slice,
    "Where": _where,
    "Add": _neutral(0.0, second_only=False),
    "Sub": _neutral(0.0, second_only=True),
    "Mul": _neutral(1.0, second_only=False),
    "Div": _neutral(1.0, second_only=True),
}
