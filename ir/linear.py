"""The linear-layer view: `y = x W (+ b)` over a MatMul or Gemm with a constant weight.

A `Linear` is a MatMul whose second input is a constant 2-D float weight, with an optional
`Add(y, b)` of a constant float bias holding n values on its last axis, where that Add is the
MatMul output's only reader; or a Gemm (no transA) with its own C. For a Gemm,
y = alpha x op(W) + beta C, so its effective weight is alpha op(W) and its effective bias
beta C broadcast to [n]. FFN pairs and attention blocks (`ir.blocks`) are groups of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir.graph import (
    WeightedMatMul,
    constant_value,
    consumers,
    is_graph_output,
    weighted_matmuls,
)


@dataclass(frozen=True, eq=False)
class Linear:
    """`x @ W (+ b)` with W seen as `[k, n]`.

    Attributes:
        matmul: The MatMul or Gemm.
        bias_node: The `Add` that adds a MatMul's bias, if any (None for Gemm).
        bias: The bias constant (a MatMul's Add operand, or a Gemm's C), if any.
    """

    matmul: WeightedMatMul
    bias_node: gs.Node | None
    bias: gs.Constant | None

    @property
    def node(self) -> gs.Node:
        """The MatMul or Gemm node."""
        return self.matmul.node

    @property
    def name(self) -> str:
        """The MatMul/Gemm node's name (for stats and `exclude`)."""
        return str(self.matmul.node.name)

    @property
    def activation(self) -> gs.Tensor:
        """The input x."""
        return self.matmul.activation

    @property
    def output(self) -> gs.Tensor:
        """The layer's result, after the bias."""
        node = self.bias_node or self.matmul.node
        return node.outputs[0]

    @property
    def alpha(self) -> float:
        """Gemm's alpha (1 for a MatMul)."""
        return float(self.node.attrs.get("alpha", 1.0)) if self.node.op == "Gemm" else 1.0

    @property
    def beta(self) -> float:
        """Gemm's beta (1 for a MatMul)."""
        return float(self.node.attrs.get("beta", 1.0)) if self.node.op == "Gemm" else 1.0

    def weight(self) -> np.ndarray:
        """W as `[k, n]`, as stored (alpha not applied)."""
        value = np.asarray(self.matmul.weight.values)
        return value.T if self.matmul.transposed else value

    def bias_value(self) -> np.ndarray | None:
        """The bias as stored, flattened (beta not applied), if any."""
        return None if self.bias is None else np.asarray(self.bias.values).reshape(-1)

    @property
    def shape(self) -> tuple[int, int]:
        """(k, n)."""
        k, n = self.matmul.weight.values.shape
        return (n, k) if self.matmul.transposed else (k, n)

    def effective(self) -> tuple[np.ndarray, np.ndarray | None] | str:
        """Effective alpha W [k, n] and beta b [n] in float64, or why b cannot be read as [n]."""
        weight = np.asarray(self.matmul.weight.values)
        if self.node.op != "Gemm":
            bias = None if self.bias is None else np.asarray(self.bias.values, np.float64)
            return weight.astype(np.float64), None if bias is None else bias.reshape(-1)
        alpha, beta = self.alpha, self.beta
        scaled = alpha * (weight.T if self.matmul.transposed else weight).astype(np.float64)
        if self.bias is None or beta == 0.0:
            return scaled, None
        c = np.asarray(self.bias.values, np.float64)
        n = scaled.shape[1]
        if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
            return "gemm_bias_shape"
        return scaled, beta * np.broadcast_to(c.reshape(-1), (n,))


class ReadsActivation(Protocol):
    """A layer view with the computed tensor it reads."""

    @property
    def activation(self) -> gs.Tensor:
        """The input x."""


Layer = TypeVar("Layer", bound=ReadsActivation)


class ReadsWeight(ReadsActivation, Protocol):
    """A layer view with its input and its weight."""

    @property
    def weight(self) -> gs.Constant | None:
        """The constant weight W."""


Weighted = TypeVar("Weighted", bound=ReadsWeight)


def by_input(layers: Iterable[Layer]) -> list[list[Layer]]:
    """The layers grouped by the tensor they read, groups and layers in the order given."""
    groups: dict[int, list[Layer]] = {}
    for layer in layers:
        groups.setdefault(id(layer.activation), []).append(layer)
    return list(groups.values())


def by_input_or_weight(layers: Iterable[Weighted]) -> list[list[Weighted]]:
    """The layers linked by a shared input or a shared weight, in the order given.

    Two layers are in one group when a chain of layers, each sharing its input or its weight
    with the next, joins them (a weight read by several layers, as ALBERT's, joins their groups).
    """
    parent: dict[int, int] = {}

    def root(key: int) -> int:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    ordered = list(layers)
    for layer in ordered:
        parent[root(id(layer.weight))] = root(id(layer.activation))
    groups: dict[int, list[Weighted]] = {}
    for layer in ordered:
        groups.setdefault(root(id(layer.activation)), []).append(layer)
    return list(groups.values())


def linear_layer(graph: gs.Graph, wm: WeightedMatMul) -> Linear | str:
    """The layer `wm` as a Linear, or why it is not one (`not_float`, `weight_first`)."""
    if np.asarray(wm.weight.values).dtype.kind != "f":
        return "not_float"
    if wm.weight_index != 1:
        return "weight_first"
    if wm.node.op == "Gemm":
        return Linear(wm, None, wm.bias)
    bias, add = bias_add(graph, wm.node)
    return Linear(wm, add, bias)


def linears(graph: gs.Graph) -> list[Linear]:
    """Every `x @ W (+ b)` of the graph, in graph order."""
    found = (linear_layer(graph, wm) for wm in weighted_matmuls(graph))
    return [linear for linear in found if isinstance(linear, Linear)]


def bias_add(graph: gs.Graph, node: gs.Node) -> tuple[gs.Constant | None, gs.Node | None]:
    """The constant [n] bias of the Add that alone reads a MatMul's output, if there is one."""
    result = node.outputs[0]
    readers = consumers(result)
    if len(readers) != 1 or readers[0].op != "Add" or is_graph_output(graph, result):
        return None, None
    add = readers[0]
    others = [t for t in add.inputs if t is not result]
    if len(others) != 1 or not isinstance(others[0], gs.Constant):
        return None, None
    values = np.asarray(others[0].values)
    n = np.asarray(node.inputs[1].values).shape[1]
    if values.dtype.kind != "f" or values.size != n or values.shape[-1] != n:
        return None, None
    return others[0], add


def residual(graph: gs.Graph, linear: Linear) -> gs.Tensor | None:
    """The stream r that the linear's output is added to (`Add(y, r)`, y read only there)."""
    out = linear.output
    readers = consumers(out)
    if len(readers) != 1 or readers[0].op != "Add" or is_graph_output(graph, out):
        return None
    add = readers[0]
    if len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
        return None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    return None if constant_value(other) is not None else other
