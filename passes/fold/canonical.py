"""Canonical forms: constant operands second, fused layer norm and GELU, QOperator as QDQ."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir.fusions import fuse_gelu, fuse_layer_norm
from nlpress.ir.graph import fresh_name, fresh_node_name, opset_version
from nlpress.ir.shapes import Shapes
from nlpress.passes.fold.graph_utils import is_constant


def canonical_operands(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Add(c, x) -> Add(x, c), Mul(c, x) -> Mul(x, c)."""
    count = 0
    for node in graph.nodes:
        if node.op in ("Add", "Mul") and len(node.inputs) == 2:
            a, b = node.inputs
            if is_constant(a) and not is_constant(b):
                node.inputs = [b, a]
                count += 1
    return count


def fuse(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Decomposed LayerNorm -> LayerNormalization; erf GELU -> Gelu (where the opset has them)."""
    version = opset_version(graph) or 0
    count = 0
    if version >= 17:
        count += fuse_layer_norm(graph, lambda t: shapes[t].shape)
    if version >= 20:
        count += fuse_gelu(graph)
    return count


def decompose_qlinear(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """QLinearMatMul(a, b) -> QuantizeLinear(MatMul(DequantizeLinear(a), DequantizeLinear(b))).

    The QDQ form of the same product (ONNX Runtime's QOperator and QDQ formats are two spellings
    of one model), which TVM imports and the lowering turns into integer arithmetic. A weight
    with one scale per column dequantizes along its last axis.
    """
    count = 0
    names = set(graph.tensors())
    for node in [n for n in graph.nodes if n.op == "QLinearMatMul" and n.domain in ("", None)]:
        a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = node.inputs
        a_float = _dequantized(graph, node, a, a_scale, a_zero, names)
        b_float = _dequantized(graph, node, b, b_scale, b_zero, names)
        product = gs.Variable(fresh_name(names, f"{node.outputs[0].name}_float"), np.float32)
        matmul = gs.Node("MatMul", fresh_node_name(graph, f"{node.name}/MatMul"))
        matmul.inputs, matmul.outputs = [a_float, b_float], [product]
        node.op, node.name = "QuantizeLinear", fresh_node_name(graph, f"{node.name}/Quantize")
        node.inputs, node.attrs = [product, y_scale, y_zero], {}
        graph.nodes.append(matmul)
        count += 1
    return count


def _dequantized(
    graph: gs.Graph,
    node: gs.Node,
    value: gs.Tensor,
    scale: gs.Tensor,
    zero: gs.Tensor,
    names: set[str],
) -> gs.Variable:
    out = gs.Variable(fresh_name(names, f"{value.name}_dequantized"), np.float32)
    per_column = np.asarray(getattr(scale, "values", 0)).size > 1
    rank = len(value.shape or ()) if not isinstance(value, gs.Constant) else value.values.ndim
    attrs = {"axis": rank - 1} if per_column else {}
    dequantize = gs.Node(
        "DequantizeLinear", fresh_node_name(graph, f"{node.name}/Dequantize"), attrs=attrs
    )
    dequantize.inputs, dequantize.outputs = [value, scale, zero], [out]
    graph.nodes.append(dequantize)
    return out
