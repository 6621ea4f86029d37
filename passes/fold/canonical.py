"""Canonical forms: constant operands second, fused layer norm and GELU, quantized matmuls."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from nlpress.ir.fusions import fuse_gelu, fuse_layer_norm
from nlpress.ir.graph import (
    consumers,
    fresh_name,
    fresh_node_name,
    is_graph_output,
    opset_version,
    producer,
)
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
        product = gs.Variable(fresh_name(names, f"{node.outputs[0].name}_float"), a_float.dtype)
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
    zero: gs.Tensor | None,
    names: set[str],
) -> gs.Variable:
    dtype = getattr(scale, "values", None)
    dtype = dtype.dtype if dtype is not None else (scale.dtype or np.float32)  # the scale's
    out = gs.Variable(fresh_name(names, f"{value.name}_dequantized"), dtype)
    per_column = np.asarray(getattr(scale, "values", 0)).size > 1
    rank = len(value.shape or ()) if not isinstance(value, gs.Constant) else value.values.ndim
    attrs = {"axis": rank - 1} if per_column else {}
    dequantize = gs.Node(
        "DequantizeLinear", fresh_node_name(graph, f"{node.name}/Dequantize"), attrs=attrs
    )
    given = zero is not None and (zero.name or isinstance(zero, gs.Constant))
    dequantize.inputs, dequantize.outputs = [value, scale, *([zero] if given else [])], [out]
    graph.nodes.append(dequantize)
    return out


def integer_matmul_as_qdq(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Mul(Cast(MatMulInteger(a, W, za, zw)), Mul(sa, sw)) -> MatMul(DQ(a, sa, za), DQ(W, sw, zw)).

    ONNX Runtime's dynamic quantization writes the integer product and its scaling apart; TVM
    imports MatMulInteger as int32 arithmetic on a widened copy of W (4x its bytes). The QDQ
    form is the same product, which the lowering turns into the integer kernels on int8 W.
    """
    count = 0
    names = set(graph.tensors())
    for node in [n for n in graph.nodes if n.op == "MatMulInteger" and n.domain in ("", None)]:
        match = _scaled_integer_product(graph, node, shapes)
        if match is None:
            continue
        scaling, a_scale, w_scale = match
        a, w, *zeros = node.inputs
        a_zero, w_zero = [*zeros, None, None][:2]
        a_float = _dequantized(graph, node, a, a_scale, a_zero, names)
        w_float = _dequantized(graph, node, w, w_scale, w_zero, names)
        node.op, node.inputs = "MatMul", [a_float, w_float]
        node.outputs = list(scaling.outputs)
        scaling.outputs = []
        count += 1
    return count


def _scaled_integer_product(
    graph: gs.Graph, node: gs.Node, shapes: Shapes
) -> tuple[gs.Node, gs.Tensor, gs.Tensor] | None:
    """(the scaling Mul, sa, sw) when the product is only cast to float and scaled by sa * sw."""
    cast = _only_reader(graph, node.outputs[0])
    if cast is None or cast.op != "Cast" or cast.attrs.get("to") != TensorProto.FLOAT:
        return None
    scaling = _only_reader(graph, cast.outputs[0])
    if scaling is None or scaling.op != "Mul":
        return None
    factor = next((t for t in scaling.inputs if t is not cast.outputs[0]), None)
    scales = producer(factor) if factor is not None else None
    if scales is None or scales.op != "Mul" or len(scales.inputs) != 2:
        return None
    a_scale, w_scale = scales.inputs
    if not isinstance(w_scale, gs.Constant):
        a_scale, w_scale = w_scale, a_scale
    width = node.inputs[1].shape[-1] if isinstance(node.inputs[1], gs.Constant) else None
    if not isinstance(w_scale, gs.Constant) or width is None or w_scale.values.dtype != np.float32:
        return None
    if np.asarray(w_scale.values).size not in (1, width) or shapes[a_scale].shape != ():
        return None
    return scaling, a_scale, w_scale


def scaled_cast_as_dequantize(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Mul(Cast(W_q, to=float), s) -> DequantizeLinear(W_q, s) for a constant int8 [k, n] W_q.

    Weight-only quantized files spell the dequantization of a weight so, with s one scale or one
    per column; folded, W would be stored as float (4x its bytes). As a DequantizeLinear it is
    the form the lowering keeps as int8 (`targets/panels.py`).
    """
    count = 0
    names = set(graph.tensors())
    for cast in [n for n in graph.nodes if n.op == "Cast" and n.inputs and n.outputs]:
        weight = cast.inputs[0]
        scaling = _only_reader(graph, cast.outputs[0])
        if cast.attrs.get("to") != TensorProto.FLOAT or scaling is None or scaling.op != "Mul":
            continue
        if not isinstance(weight, gs.Constant) or weight.values.dtype != np.int8:
            continue
        scale = next((t for t in scaling.inputs if t is not cast.outputs[0]), None)
        columns = _column_scale(scale, weight.values.shape)
        if columns is None:
            continue
        scale_constant = gs.Constant(fresh_name(names, f"{weight.name}_scale"), columns)
        scaling.op, scaling.inputs = "DequantizeLinear", [weight, scale_constant]
        scaling.attrs = {"axis": 1} if columns.ndim else {}
        count += 1
    return count


def _column_scale(scale: gs.Tensor | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """A float32 scale of a [k, n] weight as DequantizeLinear takes it: a scalar or [n]."""
    if not isinstance(scale, gs.Constant) or len(shape) != 2:
        return None
    values = np.asarray(scale.values)
    if values.dtype != np.float32 or values.ndim > 2:
        return None
    if values.size == 1:
        return values.reshape(())
    if values.shape[-1] == shape[1] and values.size == shape[1]:
        return values.reshape(shape[1])
    return None


def _only_reader(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    readers = consumers(tensor)
    return readers[0] if len(readers) == 1 and not is_graph_output(graph, tensor) else None


def unflattened_gemm(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Reshape(Gemm(Reshape(x, [-1, k]), W, c), [..x's rows.., n]) -> Add(MatMul(x, W), c).

    GPT-2's Conv1D layers are exported so: rows flattened, a Gemm, rows restored. As a MatMul
    on x itself the layer is the dense form every pass recognizes. Only an untransposed weight,
    alpha = beta = 1 and a restore to exactly x's leading dims qualify.
    """
    count = 0
    names = set(graph.tensors())
    for gemm in [n for n in graph.nodes if n.op == "Gemm"]:
        match = _flattened_rows(graph, gemm, shapes)
        if match is None:
            continue
        x, restore = match
        weight, *bias = gemm.inputs[1:]
        result = restore.outputs[0]
        restore.outputs = []
        gemm.op, gemm.attrs, gemm.inputs = "MatMul", {}, [x, weight]
        if bias and (bias[0].name or isinstance(bias[0], gs.Constant)):
            product = gs.Variable(fresh_name(names, f"{result.name}_matmul"), np.float32)
            gemm.outputs = [product]
            add = gs.Node("Add", fresh_node_name(graph, f"{gemm.name}/bias"))
            add.inputs, add.outputs = [product, bias[0]], [result]
            graph.nodes.append(add)
        else:
            gemm.outputs = [result]
        count += 1
    return count


def _flattened_rows(
    graph: gs.Graph, gemm: gs.Node, shapes: Shapes
) -> tuple[gs.Tensor, gs.Node] | None:
    """(x, the restoring Reshape) when `gemm` reads x's rows flattened and they are restored."""
    attrs = gemm.attrs
    plain = attrs.get("transA", 0) == 0 and attrs.get("transB", 0) == 0
    if not plain or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return None
    flatten = producer(gemm.inputs[0])
    weight = gemm.inputs[1]
    if flatten is None or flatten.op != "Reshape" or not isinstance(weight, gs.Constant):
        return None
    if len(gemm.inputs) > 2 and np.asarray(getattr(gemm.inputs[2], "values", 0)).ndim > 1:
        return None
    restore = _only_reader(graph, gemm.outputs[0])
    if (
        restore is None
        or restore.op != "Reshape"
        or _only_reader(graph, flatten.outputs[0]) is None
    ):
        return None
    x = flatten.inputs[0]
    rows, restored = shapes[x].shape, shapes[restore.outputs[0]].shape
    if rows is None or restored is None or len(rows) < 2:
        return None
    if tuple(restored) != (*rows[:-1], weight.values.shape[1]):
        return None
    return x, restore
