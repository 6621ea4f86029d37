"""Graph helpers that passes share, over onnx-graphsurgeon.

Objects are matched by identity, never by tensor name. A tensor's producer is `tensor.inputs[0]`
and its consumers are `tensor.outputs`; these helpers name those relations and add the few
rewrites that every pass needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that writes `tensor`, or None for graph inputs and constants."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """The nodes that read `tensor`, in graph order of insertion."""
    return list(tensor.outputs)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """Whether `tensor` is one of the graph's outputs."""
    return any(out is tensor for out in graph.outputs)


def is_graph_input(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """Whether `tensor` is one of the graph's inputs."""
    return any(inp is tensor for inp in graph.inputs)


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and node.op == "Constant" and "value" in node.attrs:
        value = node.attrs["value"]
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def bypass(graph: gs.Graph, node: gs.Node, source: gs.Tensor, result: gs.Tensor) -> bool:
    """Remove `node`, whose output `result` equals its input `source`, rewiring every reader.

    Graph output names are kept: when `result` is a graph output, the producer of `source` is
    made to write `result` instead. Returns False (and changes nothing) when that is impossible,
    i.e. when `source` is itself a graph input, output or constant.
    """
    if is_graph_output(graph, result):
        upstream = producer(source)
        if upstream is None or is_graph_output(graph, source) or is_graph_input(graph, source):
            return False
        for reader in consumers(source):
            if reader is not node:
                _replace_input(reader, source, result)
        upstream.outputs = [result if t is source else t for t in upstream.outputs]
    else:
        for reader in consumers(result):
            _replace_input(reader, result, source)
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes = [n for n in graph.nodes if n is not node]
    return True


def _replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    node.inputs = [new if t is old else t for t in node.inputs]


@dataclass(frozen=True)
class WeightedMatMul:
    """A MatMul or Gemm whose weight operand is a constant.

    Attributes:
        node: The MatMul or Gemm node.
        activation: The non-constant operand.
        weight: The constant weight tensor.
        weight_index: The weight's input index (1 for `x @ W`, 0 for `W @ x`).
        transposed: Whether Gemm's transB makes the stored weight `[n, k]` instead of `[k, n]`.
        bias: Gemm's constant bias, if any.

    """

    node: gs.Node
    activation: gs.Tensor
    weight: gs.Constant
    weight_index: int
    transposed: bool
    bias: gs.Constant | None


def weighted_matmuls(graph: gs.Graph) -> Iterator[WeightedMatMul]:
    """Every MatMul/Gemm with a constant 2-D weight and a non-constant input, in graph order."""
    for node in graph.nodes:
        if node.op == "MatMul":
            match = _match_matmul(node)
        elif node.op == "Gemm":
            match = _match_gemm(node)
        else:
            match = None
        if match is not None:
            yield match


def _match_matmul(node: gs.Node) -> WeightedMatMul | None:
    for weight_index in (1, 0):
        weight, activation = node.inputs[weight_index], node.inputs[1 - weight_index]
        if (
            isinstance(weight, gs.Constant)
            and not isinstance(activation, gs.Constant)
            and weight.values.ndim == 2
        ):
            return WeightedMatMul(node, activation, weight, weight_index, False, None)
    return None


def _match_gemm(node: gs.Node) -> WeightedMatMul | None:
    activation, weight = node.inputs[0], node.inputs[1]
    if node.attrs.get("transA", 0) or not isinstance(weight, gs.Constant):
        return None
    if isinstance(activation, gs.Constant):
        return None
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and not isinstance(bias, gs.Constant):
        return None
    transposed = bool(node.attrs.get("transB", 0))
    return WeightedMatMul(node, activation, weight, 1, transposed, bias)


def opset_imports(graph: gs.Graph) -> list[onnx.OperatorSetIdProto]:
    """The graph's opset imports, the default domain's first (as a ModelProto lists them)."""
    imports = list(graph.import_domains or [])
    if not any(i.domain in ("", "ai.onnx") for i in imports):
        imports.insert(0, onnx.helper.make_opsetid("", graph.opset))
    return imports


def opset_version(graph: gs.Graph, domain: str = "") -> int | None:
    """The imported version of `domain` (the default ONNX domain unless named), or None."""
    for item in opset_imports(graph):
        if item.domain == domain or (not domain and item.domain == "ai.onnx"):
            return int(item.version)
    return None


def fresh_name(names: set[str], wanted: str) -> str:
    """`wanted`, or `wanted_2`, `wanted_3`, ... whichever is not in `names`; added to them."""
    name, suffix = wanted, 1
    while name in names:
        suffix += 1
        name = f"{wanted}_{suffix}"
    names.add(name)
    return name


def fresh_node_name(graph: gs.Graph, wanted: str) -> str:
    """A node name like `wanted` that no node of `graph` has yet."""
    return fresh_name({n.name for n in graph.nodes}, wanted)
