"""Small graph helpers the fold rewrites share."""

from __future__ import annotations

import onnx_graphsurgeon as gs


def detach(node: gs.Node) -> None:
    """Disconnect `node` from its inputs and outputs, so that cleanup removes it."""
    node.inputs.clear()
    node.outputs.clear()


def is_constant(tensor: gs.Tensor) -> bool:
    """Whether `tensor` is an initializer or a left-out optional input (named "")."""
    return isinstance(tensor, gs.Constant) or not tensor.name


def has_subgraph(node: gs.Node) -> bool:
    """Whether `node` carries a graph attribute (If, Loop, Scan)."""
    return any(isinstance(v, gs.Graph) for v in node.attrs.values())


def unique(graph: gs.Graph, name: str) -> str:
    """`name`, or `name_1`, `name_2`, ...: the first no tensor of `graph` has."""
    names = graph.tensors().keys()
    candidate, index = name, 0
    while candidate in names:
        index += 1
        candidate = f"{name}_{index}"
    return candidate
