"""What quantize-insert rewrites: weight MatMuls, attention MatMuls and embedding tables.

A weight layer is a linear layer (`ir.linear`) whose activation is not already dequantized; a
Gemm among them is rewritten in place as MatMul(x, alpha op(W)) (+ Add(beta C)). A table is a
float 2-D constant that only Gathers on axis 0 read (word, position and token-type embeddings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.ir.graph import (
    fresh_name,
    fresh_node_name,
    producer,
    weighted_matmuls,
)
from nlpress.ir.linear import linears
from nlpress.passes.calibration import (
    activations,
    token_rows,
)
from nlpress.passes.quantize_ranges import TensorStats

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


@dataclass
class Layer:
    """A MatMul to quantize.

    Attributes:
        node: The MatMul node in the working graph.
        label: Its name in stats and metadata.
        weight: The constant weight [k, n], or None for attention's batched MatMul.
    """

    node: gs.Node
    label: str
    weight: gs.Constant | None

    @property
    def activation(self) -> gs.Tensor:
        """Input 0."""
        return self.node.inputs[0]

    @property
    def inputs(self) -> list[gs.Tensor]:
        """The computed inputs that get activation Q/DQ."""
        return [self.activation] if self.weight is not None else list(self.node.inputs[:2])


@dataclass
class Table:
    """A constant table read only by Gathers on axis 0 (an embedding).

    Attributes:
        constant: The float table [rows, d] in the working graph.
        readers: The Gather nodes reading it, in graph order.
    """

    constant: gs.Constant
    readers: list[gs.Node]


def find_tables(graph: gs.Graph) -> list[Table]:
    """The float 2-D constants that only Gathers on axis 0 read, as their data input."""
    found: dict[int, Table] = {}
    for node in graph.nodes:
        if node.op != "Gather" or not node.inputs or not isinstance(node.inputs[0], gs.Constant):
            continue
        table = node.inputs[0]
        values = np.asarray(table.values)
        if values.ndim != 2 or values.dtype.kind != "f" or int(node.attrs.get("axis", 0)) != 0:
            continue
        if isinstance(node.inputs[1], gs.Constant):
            continue  # fold's business: a constant gather is a constant
        found.setdefault(id(table), Table(table, [])).readers.append(node)
    return [t for t in found.values() if _only_gathered(t)]


def _only_gathered(table: Table) -> bool:
    readers = {id(n) for n in table.readers}
    return all(id(n) in readers for n in table.constant.outputs)


def candidates(graph: gs.Graph, attention: bool) -> list[Layer]:
    """Float-weight MatMul/Gemm layers (and attention MatMuls) not yet quantized."""
    found: list[Layer] = []
    for linear in linears(graph):
        if not from_dq(linear.activation):
            found.append(Layer(linear.node, _label(linear.node, len(found)), linear.matmul.weight))
    weighted = {id(match.node) for match in weighted_matmuls(graph)}
    if attention:
        for node in graph.nodes:
            if node.op == "MatMul" and id(node) not in weighted and _attention_matmul(node):
                found.append(Layer(node, _label(node, len(found)), None))
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return sorted(found, key=lambda layer: order[id(layer.node)])


def _attention_matmul(node: gs.Node) -> bool:
    inputs = node.inputs[:2]
    return not any(isinstance(t, gs.Constant) or from_dq(t) for t in inputs) and all(
        t.dtype in (None, np.float32) for t in inputs
    )


def from_dq(tensor: gs.Tensor) -> bool:
    """Whether a Q/DQ node computes `tensor`."""
    source = producer(tensor)
    return source is not None and source.op in QDQ_OPS


def has_qdq(graph: gs.Graph) -> bool:
    """Whether the graph dequantizes anything already."""
    return any(node.op == "DequantizeLinear" for node in graph.nodes)


def _label(node: gs.Node, index: int) -> str:
    return str(node.name) if node.name else f"#{index}"


def as_matmul(layer: Layer) -> Layer:
    """The layer after its Gemm (if it was one) became a MatMul."""
    weight = layer.node.inputs[1] if layer.weight is not None else None
    assert weight is None or isinstance(weight, gs.Constant)
    return Layer(layer.node, layer.label, weight)


def gemm_as_matmul(graph: gs.Graph, node: gs.Node) -> None:
    """Rewrite Gemm(x, W, C) in place as MatMul(x, alpha op(W)) (+ Add(beta C))."""
    weight = node.inputs[1]
    assert isinstance(weight, gs.Constant)
    values = np.asarray(weight.values)
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    matrix = (values.T if node.attrs.get("transB", 0) else values) * alpha
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    names = set(graph.tensors())
    node.op, node.attrs = "MatMul", {}
    node.inputs = [
        node.inputs[0],
        gs.Constant(fresh_name(names, weight.name), matrix.astype(values.dtype)),
    ]
    if bias is None or beta == 0.0:
        return
    assert isinstance(bias, gs.Constant)
    result = node.outputs[0]
    product = gs.Variable(fresh_name(names, f"{result.name}_matmul"), dtype=result.dtype)
    offset = np.asarray(bias.values) * np.asarray(beta, dtype=np.asarray(bias.values).dtype)
    add = gs.Node(
        "Add",
        fresh_node_name(graph, f"{node.name}/bias"),
        inputs=[product, gs.Constant(fresh_name(names, bias.name), offset)],
        outputs=[result],
    )
    node.outputs = [product]
    graph.nodes.insert(graph.nodes.index(node) + 1, add)


def collect(
    model: Model, tensors: Sequence[gs.Tensor], feeds: Sequence[Feeds], channels: bool
) -> list[TensorStats]:
    """Histograms (and per-channel max |x| with `channels`) of tensors over real-token rows."""
    stats = [TensorStats() for _ in tensors]
    if not tensors:
        return stats
    for batch, values in zip(feeds, activations(model, tensors, feeds), strict=True):
        for stat, value in zip(stats, values, strict=True):
            stat.add(token_rows(value, batch), channels)
    return stats
