"""The graph side of factorize-matmul: which layers, their Grams, and the rewrite.

MatMul(x, W) becomes MatMul(MatMul(x, U), V) with U before the layer's node (named
`<node>/lowrank_u`) and the node itself reading (h, V) (renamed `<node>/lowrank_v`); a refitted
bias replaces the old one where it was (the Add after a MatMul, or a Gemm's C, divided by beta).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.ir.graph import WeightedMatMul, fresh_name, fresh_node_name, producer
from nlpress.ir.linear import Linear, linear_layer
from nlpress.passes.compress.grams import Grams, token_input_grams
from nlpress.passes.factorize_matmul.fitting import Fit

# Node-name suffixes that mark the two halves of a factorized layer.
MARK_U = "/lowrank_u"
MARK_V = "/lowrank_v"

# A weight with at least this share of exact zeros was made sparse (prune-sparsify); a dense
# low-rank factorization would undo that, so such layers are skipped.
SPARSE_SHARE = 0.25


def input_grams(
    model: Model, layers: Sequence[WeightedMatMul], data: Sequence[Feeds]
) -> dict[int, Grams]:
    """The augmented Gram of each distinct layer input on `data`, keyed by the tensor's identity."""
    if not layers or not data:
        return {}
    inputs = list({id(layer.activation): layer.activation for layer in layers}.values())
    grams = token_input_grams(model, inputs, data)
    return {id(t): Grams(g) for t, g in zip(inputs, grams, strict=True)}


def dense_layer(
    graph: gs.Graph, layer: WeightedMatMul
) -> tuple[Linear, np.ndarray, np.ndarray | None] | str:
    """The layer and its effective W [k, n] and b in float64, or why it cannot be factorized."""
    linear = linear_layer(graph, layer)
    if isinstance(linear, str):
        return linear
    values = np.asarray(layer.weight.values)
    if len(layer.weight.outputs) > 1:
        return "shared_weight"
    if values.size and np.mean(values == 0) >= SPARSE_SHARE:
        return "sparse"
    if linear.alpha == 0.0:
        return "gemm_alpha_zero"
    effective = linear.effective()
    return effective if isinstance(effective, str) else (linear, *effective)


def rewrite(graph: gs.Graph, linear: Linear, fit: Fit, names: set[str]) -> None:
    """Put MatMul(x, U) before the layer's node and make that node read (h, V)."""
    layer = linear.matmul
    node, dtype = layer.node, np.asarray(layer.weight.values).dtype
    base = node.name or layer.weight.name
    first = gs.Constant(
        fresh_name(names, f"{layer.weight.name}_lowrank_u"), fit.first.astype(dtype)
    )
    second_values = _second_values(layer, fit)
    second = gs.Constant(
        fresh_name(names, f"{layer.weight.name}_lowrank_v"), second_values.astype(dtype)
    )
    hidden = gs.Variable(fresh_name(names, f"{base}/lowrank_h"), dtype=dtype)
    matmul = gs.Node(
        "MatMul",
        fresh_node_name(graph, base + MARK_U),
        inputs=[layer.activation, first],
        outputs=[hidden],
    )
    inputs = list(node.inputs)
    inputs[0], inputs[1] = hidden, second
    if fit.bias is not None and linear.bias is not None:
        _replace_bias(linear, fit.bias, inputs, names)
    node.inputs = inputs
    node.name = base + MARK_V
    graph.nodes.insert(graph.nodes.index(node), matmul)


def _second_values(layer: WeightedMatMul, fit: Fit) -> np.ndarray:
    if layer.node.op != "Gemm":
        return fit.second
    second = fit.second / float(layer.node.attrs.get("alpha", 1.0))
    return second.T if layer.transposed else second


def _replace_bias(
    linear: Linear, bias: np.ndarray, inputs: list[gs.Tensor], names: set[str]
) -> None:
    """Give the layer its refitted bias, in the tensor and node where its old bias was."""
    old = linear.bias
    assert old is not None
    dtype = np.asarray(old.values).dtype
    if linear.node.op == "Gemm":
        values = bias / linear.beta
        shape = old.values.shape if old.values.size == bias.size else bias.shape
        new = gs.Constant(
            fresh_name(names, f"{old.name}_refit"), values.reshape(shape).astype(dtype)
        )
        inputs[2] = new
        return
    add = linear.bias_node
    assert add is not None
    new = gs.Constant(
        fresh_name(names, f"{old.name}_refit"), bias.reshape(old.values.shape).astype(dtype)
    )
    add.inputs = [new if t is old else t for t in add.inputs]


def quantized_layer(graph: gs.Graph) -> str | None:
    """The name of a MatMul/Gemm whose weight comes from DequantizeLinear, if there is one."""
    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm"):
            continue
        for tensor in node.inputs[:2]:
            source = producer(tensor)
            if (
                source is not None
                and source.op == "DequantizeLinear"
                and isinstance(source.inputs[0], gs.Constant)
            ):
                return str(node.name)
    return None
