"""The QDQ rewrite: any subset of the layers written in the QDQ format (`ir.qdq`).

Static activations get QuantizeLinear -> DequantizeLinear with their calibrated range, dynamic
ones DynamicQuantizeLinear -> DequantizeLinear; one pair serves every MatMul reading the same
tensor (Q, K and V share one), and one int8 weight every MatMul reading the same float weight.
Attention's second operand is signed (int8 symmetric) when static.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Model
from nlpress.ir.graph import (
    fresh_name,
    fresh_node_name,
)
from nlpress.ir.qdq import ACTIVATION, SIGNED_ACTIVATION, TABLE, WEIGHT
from nlpress.passes.quantize_insert.layers import Layer, Table


@dataclass
class Plan:
    """Everything needed to write the QDQ graph for any subset of the layers.

    Attributes:
        mode: static or dynamic activations.
        per_channel: Whether weights get one scale per output column.
        work: The float (canonicalized, smoothed) model the layers live in.
        layers: The layers that may be quantized.
        ranges: Static activation ranges by tensor name (empty in dynamic mode).
        weights: Quantized weights by layer index, filled on first use.
        tables: The constant tables stored as int8 in every build.
    """

    mode: str
    per_channel: bool
    work: Model
    layers: list[Layer]
    ranges: dict[str, tuple[float, float]]
    weights: dict[int, tuple[np.ndarray, np.ndarray]]
    tables: list[Table] = field(default_factory=list)
    quantized_tables: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def quantized_table(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Table `index` as int8 rows and one scale per row."""
        if index not in self.quantized_tables:
            values = np.asarray(self.tables[index].constant.values)
            self.quantized_tables[index] = TABLE.quantize(values, per_axis=True)
        return self.quantized_tables[index]

    def quantized_weight(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Layer `index`'s int8 weight and scale."""
        if index not in self.weights:
            weight = self.layers[index].weight
            assert weight is not None
            self.weights[index] = WEIGHT.quantize(np.asarray(weight.values), self.per_channel)
        return self.weights[index]

    def build(self, selected: Iterable[int]) -> Model:
        """A copy of the working model with the `selected` layers quantized."""
        out = self.work.copy()
        position = {id(n): i for i, n in enumerate(self.work.graph.nodes)}
        writer = _Writer(out.graph, self.mode, self.ranges)
        for index in sorted(selected):
            layer = self.layers[index]
            node = out.graph.nodes[position[id(layer.node)]]
            if layer.weight is None:
                node.inputs[0] = writer.activation(node.inputs[0], signed=False)
                node.inputs[1] = writer.activation(node.inputs[1], signed=True)
            else:
                node.inputs[0] = writer.activation(node.inputs[0], signed=False)
                node.inputs[1] = writer.weight(node, *self.quantized_weight(index))
        for index, table in enumerate(self.tables):
            readers = [out.graph.nodes[position[id(n)]] for n in table.readers]
            dequantized = writer.table(table.constant.name, *self.quantized_table(index))
            for reader in readers:
                reader.inputs[0] = dequantized
        out.graph.toposort()
        return out


class _Writer:
    """Adds Q/DQ nodes to a graph, one activation pair per tensor."""

    def __init__(self, graph: gs.Graph, mode: str, ranges: Mapping[str, tuple[float, float]]):
        self.graph, self.mode, self.ranges = graph, mode, ranges
        self.names = set(graph.tensors())
        self.done: dict[tuple[int, bool], gs.Variable] = {}
        self.weights: dict[int, gs.Variable] = {}

    def activation(self, tensor: gs.Tensor, signed: bool) -> gs.Variable:
        """The dequantized twin of `tensor` (made once per tensor and signedness)."""
        key = (id(tensor), signed and self.mode == "static")
        if key not in self.done:
            self.done[key] = (
                self._dynamic(tensor) if self.mode == "dynamic" else self._static(tensor, key[1])
            )
        return self.done[key]

    def _static(self, tensor: gs.Tensor, signed: bool) -> gs.Variable:
        lo, hi = self.ranges[tensor.name]
        zero: np.integer
        if signed:
            scale = SIGNED_ACTIVATION.symmetric_scale(max(-lo, hi))
            zero = SIGNED_ACTIVATION.dtype(0)
        else:
            scale, zero = ACTIVATION.asymmetric_params(lo, hi)
        params = [
            self._constant(f"{tensor.name}_scale", np.asarray(scale, np.float32)),
            self._constant(f"{tensor.name}_zero_point", np.asarray(zero)),
        ]
        quantized = self._variable(f"{tensor.name}_quantized", np.asarray(zero).dtype.type)
        self._node("QuantizeLinear", tensor.name, [tensor, *params], [quantized])
        return self._dequantize(tensor.name, [quantized, *params])

    def _dynamic(self, tensor: gs.Tensor) -> gs.Variable:
        outputs = [
            self._variable(f"{tensor.name}_quantized", ACTIVATION.dtype),
            self._variable(f"{tensor.name}_scale", np.float32),
            self._variable(f"{tensor.name}_zero_point", ACTIVATION.dtype),
        ]
        self._node("DynamicQuantizeLinear", tensor.name, [tensor], outputs)
        return self._dequantize(tensor.name, outputs)

    def weight(self, node: gs.Node, values: np.ndarray, scale: np.ndarray) -> gs.Variable:
        """DequantizeLinear(W_q, scale, 0, axis=1) in place of the node's weight (made once)."""
        weight = node.inputs[1]
        if id(weight) not in self.weights:
            base = weight.name
            inputs = [
                self._constant(f"{base}_quantized", values),
                self._constant(f"{base}_scale", scale),
                self._constant(f"{base}_zero_point", np.zeros(scale.shape, WEIGHT.dtype)),
            ]
            self.weights[id(weight)] = self._dequantize(base, inputs, axis=WEIGHT.axis)
        return self.weights[id(weight)]

    def table(self, base: str, values: np.ndarray, scale: np.ndarray) -> gs.Variable:
        """DequantizeLinear(T_q, scale, 0, axis=0): a table with one scale per row."""
        inputs = [
            self._constant(f"{base}_quantized", values),
            self._constant(f"{base}_scale", scale),
            self._constant(f"{base}_zero_point", np.zeros(scale.shape, TABLE.dtype)),
        ]
        return self._dequantize(base, inputs, axis=TABLE.axis)

    def _dequantize(
        self, base: str, inputs: list[gs.Tensor], axis: int | None = None
    ) -> gs.Variable:
        out = self._variable(f"{base}_dequantized", np.float32)
        self._node("DequantizeLinear", base, inputs, [out], {} if axis is None else {"axis": axis})
        return out

    def _node(
        self,
        op: str,
        base: str,
        inputs: list[gs.Tensor],
        outputs: list[gs.Tensor],
        attrs: dict[str, int] | None = None,
    ) -> None:
        name = fresh_node_name(self.graph, f"{base}/{op}")
        self.graph.nodes.append(gs.Node(op, name, attrs or {}, inputs, outputs))

    def _constant(self, name: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(fresh_name(self.names, name), values)

    def _variable(self, name: str, dtype: type) -> gs.Variable:
        return gs.Variable(fresh_name(self.names, name), dtype=dtype)
