"""ONNX Runtime's fused contrib ops, as the standard ops they fuse (TVM imports those).

`onnxruntime.transformers.optimizer` rewrites a BERT into com.microsoft ops; those whose meaning
is a short standard formula become it again:

- SkipLayerNormalization(x, skip, gamma, beta?, bias?) -> LayerNormalization(x + skip (+ bias));
  its input-skip-bias sum output (the fourth) is that sum. The mean and inverse standard
  deviation outputs have no standard op: a graph that reads them keeps the fused op.
- BiasGelu(x, b) -> erf GELU of x + b: 0.5 (x + b) (1 + erf((x + b) / sqrt 2)).
- FastGelu(x, b?) -> tanh GELU of x (+ b): 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
- com.microsoft Gelu(x) -> erf GELU of x.

Ops with more structure (Attention, EmbedLayerNormalization) stay, and the lowering names them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir.graph import fresh_name, fresh_node_name, is_graph_output
from nlpress.ir.shapes import Shapes

CONTRIB = "com.microsoft"
SQRT_2_OVER_PI = 0.7978845608028654


class _Emitter:
    """Appends standard nodes in place of one contrib node, with fresh names."""

    def __init__(
        self, graph: gs.Graph, node: gs.Node, outputs: list[gs.Tensor], names: set[str]
    ) -> None:
        self.graph, self.node, self.outputs, self.names = graph, node, outputs, names

    def op(
        self, op: str, inputs: list[gs.Tensor], out: gs.Tensor | None = None, **attrs: object
    ) -> gs.Tensor:
        """`op(inputs)` into `out` (a fresh float tensor if None)."""
        if out is None:
            dtype = self.outputs[0].dtype or np.float32
            out = gs.Variable(fresh_name(self.names, f"{self.node.name}/{op}_out"), dtype)
        node = gs.Node(op, fresh_node_name(self.graph, f"{self.node.name}/{op}"), attrs=attrs)
        node.inputs, node.outputs = list(inputs), [out]
        self.graph.nodes.append(node)
        return out

    def scalar(self, value: float) -> gs.Constant:
        """A float32 scalar constant."""
        name = fresh_name(self.names, f"{self.node.name}/c")
        return gs.Constant(name, np.asarray(value, self.outputs[0].dtype or np.float32))


def _given(tensors: list[gs.Tensor], index: int) -> gs.Tensor | None:
    if index >= len(tensors):
        return None
    tensor = tensors[index]
    return tensor if tensor.name or isinstance(tensor, gs.Constant) else None


def _biased(emit: _Emitter, x: gs.Tensor, bias: gs.Tensor | None) -> gs.Tensor:
    return emit.op("Add", [x, bias]) if bias is not None else x


def _erf_gelu(emit: _Emitter, x: gs.Tensor, out: gs.Tensor) -> None:
    scaled = emit.op("Div", [x, emit.scalar(np.sqrt(2.0))])
    shifted = emit.op("Add", [emit.op("Erf", [scaled]), emit.scalar(1.0)])
    emit.op("Mul", [emit.op("Mul", [x, shifted]), emit.scalar(0.5)], out)


def _skip_layer_norm(emit: _Emitter) -> bool:
    node, outputs = emit.node, emit.outputs
    if any(_used(emit.graph, t) for t in outputs[1:3]):
        return False
    x, skip, gamma = node.inputs[:3]
    beta, bias = _given(node.inputs, 3), _given(node.inputs, 4)
    total = _biased(emit, emit.op("Add", [x, skip]), bias)
    if len(outputs) > 3 and _used(emit.graph, outputs[3]):
        emit.op("Identity", [total], outputs[3])
    epsilon = float(node.attrs.get("epsilon", 1e-12))
    params = [gamma, beta] if beta is not None else [gamma]
    emit.op("LayerNormalization", [total, *params], outputs[0], axis=-1, epsilon=epsilon)
    return True


def _bias_gelu(emit: _Emitter) -> bool:
    _erf_gelu(emit, emit.op("Add", emit.node.inputs[:2]), emit.outputs[0])
    return True


def _gelu(emit: _Emitter) -> bool:
    _erf_gelu(emit, emit.node.inputs[0], emit.outputs[0])
    return True


def _fast_gelu(emit: _Emitter) -> bool:
    x = _biased(emit, emit.node.inputs[0], _given(emit.node.inputs, 1))
    cube = emit.op("Mul", [emit.op("Mul", [x, x]), x])
    inner = emit.op("Add", [x, emit.op("Mul", [cube, emit.scalar(0.044715)])])
    tanh = emit.op("Tanh", [emit.op("Mul", [inner, emit.scalar(SQRT_2_OVER_PI)])])
    half = emit.op("Mul", [x, emit.scalar(0.5)])
    emit.op("Mul", [half, emit.op("Add", [tanh, emit.scalar(1.0)])], emit.outputs[0])
    return True


_DECOMPOSITIONS: dict[str, Callable[[_Emitter], bool]] = {
    "SkipLayerNormalization": _skip_layer_norm,
    "BiasGelu": _bias_gelu,
    "FastGelu": _fast_gelu,
    "Gelu": _gelu,
}


def _used(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return bool(tensor.outputs) or is_graph_output(graph, tensor)


def decompose_contrib(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Each contrib op of the table above -> its standard ops; the count rewritten."""
    count = 0
    names = set(graph.tensors())
    for node in [n for n in graph.nodes if n.domain == CONTRIB and n.op in _DECOMPOSITIONS]:
        outputs = list(node.outputs)
        node.outputs = []  # the standard ops produce them now
        if _DECOMPOSITIONS[node.op](_Emitter(graph, node, outputs, names)):
            node.inputs = []
            count += 1
        else:
            node.outputs = outputs
    return count
