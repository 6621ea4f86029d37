"""fold: exactness, every rewrite of its table on a small graph, options and preconditions.

The rewrites are checked against golden dumps in `golden/fold-*.txt` (regenerate them with
`--update-golden`, see tests/conftest.py); graphs are written in ONNX's text syntax.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from graphs import initializer, model, tensor, text_model
from onnx import helper

from nlpress.ir import Model
from nlpress.ir.dump import dump_text
from nlpress.ir.verify import check, compare, make_feeds
from nlpress.passes import PreconditionError, parse
from nlpress.passes.fold import Fold
from nlpress.passes.registry import NAMED_PIPELINES

Golden = Callable[[str, str], None]


def ops(m: Model) -> list[str]:
    return [n.op for n in m.graph.nodes]


def folds_exactly(m: Model, p: Fold | None = None, dims: dict[str, int] | None = None) -> Model:
    p = p or Fold()
    result = p.run(m)
    check(result.model)
    feeds = make_feeds(m, dims=dims, seed=1)
    assert compare(m, result.model, feeds).worst <= 1e-6
    again = p.run(result.model)
    assert not again.changed, {k: v for k, v in again.stats.items() if v}
    return result.model


def shape_chain_model(batch: int | str = "batch") -> Model:
    """Reshape(x, Concat(Gather(Shape(x), 0), Gather(Shape(x), 1), [4, 8])): x [b, s, 32]."""
    return text_model(
        f"""g (float[{batch}, seq, 32] x) => (float[{batch}, seq, 4, 8] y)
            <int64 zero = {{0}}, int64 one = {{1}}, int64[1] axes = {{0}},
             int64[2] heads = {{4, 8}}> {{
            [shape] s = Shape(x)
            [batch] b = Gather<axis = 0>(s, zero)
            [sequence] n = Gather<axis = 0>(s, one)
            [batch_1d] b1 = Unsqueeze(b, axes)
            [sequence_1d] n1 = Unsqueeze(n, axes)
            [target] target = Concat<axis = 0>(b1, n1, heads)
            [split] y = Reshape(x, target)
        }}"""
    )


LAYER_NORM = """g (float[n, 4] x) => (float[n, 4] y)
    <float two = {2}, float eps = {1e-5},
     float[4] gamma = {1, 2, 3, 4}, float[4] beta = {0.5, 0, -0.5, 1}> {
    [mean] mean = ReduceMean<axes = [-1]>(x)
    [centre] d = Sub(x, mean)
    [square] sq = Pow(d, two)
    [variance] var = ReduceMean<axes = [-1]>(sq)
    [plus_eps] ve = Add(var, eps)
    [std] std = Sqrt(ve)
    [normalize] n = Div(d, std)
    [scale] g = Mul(n, gamma)
    [shift] y = Add(g, beta)
}"""

GELU = """g (float[n, 8] x) => (float[n, 8] y)
    <float sqrt2 = {1.4142135}, float one = {1}, float half = {0.5}> {
    [div] s = Div(x, sqrt2)
    [erf] e = Erf(s)
    [add] a = Add(e, one)
    [mul] m = Mul(x, a)
    [half] y = Mul(m, half)
}"""

# One graph per entry of fold's rewrite table (passes/fold/__init__.py, _REWRITES), by golden name.
REWRITES = {
    # constants_to_initializers: a Constant node becomes an initializer.
    "fold-constant-node": """g (float[n, 2] x) => (float[n, 2] y) {
        [c] c = Constant<value = float[2] {1.5, -2.0}>()
        [add] y = Add(x, c)
    }""",
    # shape_folded: a Shape of a static tensor and the arithmetic on it become one constant.
    "fold-static-shape": """g (float[2, 3] x, float[6] z) => (float[2, 3] y) <int64 one = {1}> {
        [shape] s = Shape(x)
        [plus] t = Add(s, one)
        [minus] u = Sub(t, one)
        [reshape] y = Reshape(z, u)
    }""",
    # folded: a subgraph of constants is evaluated into one initializer.
    "fold-constant-subgraph": """g (float[n, 3] x) => (float[n, 2] y)
        <float[2, 3] w = {1, 2, 3, 4, 5, 6}, float two = {2}> {
        [transpose] wt = Transpose<perm = [1, 0]>(w)
        [double] w2 = Mul(wt, two)
        [mm] y = MatMul(x, w2)
    }""",
    # noops_removed: every kind of no-op fold knows, between two real ops.
    "fold-noops": """g (float[n, 4] x) => (float[n, 4] y)
        <float zero = {0}, float one = {1}, int64[2] same = {0, 4}, bool yes = {1}> {
        [relu] r = Relu(x)
        [identity] a = Identity(r)
        [dropout] d = Dropout(a)
        [cast] c = Cast<to = 1>(d)
        [reshape] s = Reshape(c, same)
        [transpose] t = Transpose<perm = [0, 1]>(s)
        [concat] k = Concat<axis = 1>(t)
        [plus_zero] p = Add(k, zero)
        [times_one] m = Mul(p, one)
        [where] w = Where(yes, m, x)
        [neg] y = Neg(w)
    }""",
    # operands_reordered: a commutative op takes its constant second (MatMul + bias stays).
    "fold-constant-operand-second": """g (float[n, 2] x) => (float[n, 2] y)
        <float[2, 2] w = {1, 2, 3, 4}, float[2] b = {1, 2}, float[2] s = {3, 4}> {
        [mm] h = MatMul(x, w)
        [bias] a = Add(b, h)
        [scale] y = Mul(s, a)
    }""",
    # qlinear_decomposed: ONNX Runtime's QOperator matmul becomes its QDQ form.
    "fold-qlinear-matmul": """g (float[n, 4] x) => (float[n, 2] y)
        <float xs = {0.05}, uint8 xz = {128}, int8[4, 2] w = {1, -2, 3, -4, 5, -6, 7, -8},
         float[2] ws = {0.1, 0.2}, int8[2] wz = {0, 0}, float ys = {0.1}, uint8 yz = {100}> {
        [quantize] xq = QuantizeLinear(x, xs, xz)
        [matmul] yq = QLinearMatMul(xq, xs, xz, w, ws, wz, ys, yz)
        [dequantize] y = DequantizeLinear(yq, ys, yz)
    }""",
    # integer_matmuls_as_qdq: ONNX Runtime's dynamic MatMulInteger and its scaling become QDQ.
    "fold-matmul-integer": """g (float[n, 4] x) => (float[n, 2] y)
        <int8[4, 2] w = {1, -2, 3, -4, 5, -6, 7, -8}, float[2] ws = {0.1, 0.2},
         int8[2] wz = {0, 0}> {
        [quantize] xq, xs, xz = DynamicQuantizeLinear(x)
        [matmul] acc = MatMulInteger(xq, w, xz, wz)
        [cast] accf = Cast<to = 1>(acc)
        [scales] s = Mul(xs, ws)
        [scale] y = Mul(accf, s)
    }""",
    # gemms_unflattened: a Gemm on flattened rows that are restored is a MatMul on the rows.
    "fold-gemm-unflattened": """g (float[b, s, 4] x) => (float[b, s, 2] y)
        <float[4, 2] w = {1, -2, 3, -4, 5, -6, 7, -8}, float[2] c = {0.5, -1},
         int64[2] flat = {-1, 4}, int64 zero = {0}, int64 one = {1}, int64[1] axes = {0},
         int64[1] width = {2}> {
        [shape] sh = Shape(x)
        [batch] b0 = Gather<axis = 0>(sh, zero)
        [sequence] s0 = Gather<axis = 0>(sh, one)
        [batch_1d] b1 = Unsqueeze(b0, axes)
        [sequence_1d] s1 = Unsqueeze(s0, axes)
        [target] t = Concat<axis = 0>(b1, s1, width)
        [flatten] xf = Reshape(x, flat)
        [gemm] yf = Gemm(xf, w, c)
        [restore] y = Reshape(yf, t)
    }""",
    # scaled_casts_as_dequantize: a weight-only file's int8 weight, cast and scaled per column.
    "fold-weight-only-cast-mul": """g (float[n, 3] x) => (float[n, 2] y)
        <int8[3, 2] w = {1, -2, 3, -4, 5, -127}, float[1, 2] s = {0.5, 0.25}> {
        [cast] wf = Cast<to = 1>(w)
        [scale] ws = Mul(wf, s)
        [matmul] y = MatMul(x, ws)
    }""",
    # deduplicated: identical initializers merge, then identical nodes on them.
    "fold-duplicates": """g (float[n, 2] x) => (float[n, 2] y)
        <float[2] b1 = {1, 2}, float[2] b2 = {1, 2}> {
        [first] a1 = Add(x, b1)
        [second] a2 = Add(x, b2)
        [sum] y = Mul(a1, a2)
    }""",
}


@pytest.mark.parametrize("name", sorted(REWRITES))
def test_each_rewrite_is_exact_and_golden(name: str, golden: Golden) -> None:
    golden(name, dump_text(folds_exactly(text_model(REWRITES[name]))))


def test_size_guard_keeps_a_huge_broadcast() -> None:
    nodes = [
        helper.make_node("Expand", ["one", "shape"], ["big"]),
        helper.make_node("Add", ["x", "big"], ["y"]),
    ]
    inits = [
        initializer("one", np.float32(1.0)),
        initializer("shape", np.array([64, 64], np.int64)),
    ]
    m = model(nodes, [tensor("x", [64, 64])], [tensor("y", [64, 64])], inits)
    assert "Expand" in ops(folds_exactly(m, Fold(max_bytes=1024)))
    assert "Expand" not in ops(folds_exactly(m, Fold(max_bytes=1 << 20)))


def test_quantized_weights_stay_quantized() -> None:
    """DequantizeLinear of an int8 weight is storage, not a constant to fold (4x the bytes)."""
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "scale", "zero"], ["w"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    inits = [
        initializer("w_q", np.arange(32, dtype=np.int8).reshape(8, 4)),
        initializer("scale", np.full(4, 0.5, np.float32)),
        initializer("zero", np.zeros(4, np.int8)),
    ]
    m = model(nodes, [tensor("x", [2, 8])], [tensor("y", [2, 4])], inits)
    assert ops(folds_exactly(m, Fold(max_bytes=1 << 20))) == ["DequantizeLinear", "MatMul"]


def test_static_shapes_fold_every_shape_chain_and_rewrite_inputs() -> None:
    m = shape_chain_model()
    out = folds_exactly(m, Fold(shape={"x": (2, 5, 32)}), dims={"batch": 2, "seq": 5})
    assert ops(out) == ["Reshape"]
    assert out.graph.inputs[0].shape == [2, 5, 32]
    target = out.graph.nodes[0].inputs[1]
    assert np.asarray(target.values).tolist() in ([2, 5, 4, 8], [0, 0, 4, 8])


def test_symbolic_shapes_keep_batch_and_fold_the_rest(golden: Golden) -> None:
    """targets_folded: a Reshape target made of the input's own dims becomes (0, 0, 4, 8)."""
    out = folds_exactly(shape_chain_model(), dims={"batch": 3, "seq": 7})
    golden("fold-symbolic-reshape-target", dump_text(out))
    assert np.asarray(out.graph.nodes[0].inputs[1].values).tolist() == [0, 0, 4, 8]
    assert out.graph.inputs[0].shape == ["batch", "seq", 32]


def test_decomposed_layer_norm_becomes_layer_normalization(golden: Golden) -> None:
    """fused: LayerNormalization exists from opset 17 on."""
    assert "LayerNormalization" not in ops(folds_exactly(text_model(LAYER_NORM, opset=13)))
    golden("fold-layer-norm", dump_text(folds_exactly(text_model(LAYER_NORM))))


def test_erf_gelu_becomes_gelu_only_where_the_opset_has_it(golden: Golden) -> None:
    """fused: Gelu exists from opset 20 on; before, the erf form stays."""
    assert ops(folds_exactly(text_model(GELU))) == ["Div", "Erf", "Add", "Mul", "Mul"]
    golden("fold-gelu", dump_text(folds_exactly(text_model(GELU, opset=20))))


def test_unchanged_graph_reports_false() -> None:
    m = model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [2])], [tensor("y", [2])])
    result = Fold().run(m)
    assert not result.changed
    assert result.stats["nodes_before"] == result.stats["nodes_after"] == 1


def test_options_parse_print_and_validate() -> None:
    p = parse("fold{shape=input_ids:1x128,attention_mask:1x128 max-bytes=4096}")
    fold = p.passes[0]
    assert isinstance(fold, Fold)
    assert fold.shape == {"input_ids": (1, 128), "attention_mask": (1, 128)}
    assert str(parse(str(p))) == str(p)
    assert NAMED_PIPELINES["O1"].startswith("fold,")
    with pytest.raises(ValueError, match="max-bytes"):
        Fold(max_bytes=-1)


def test_unknown_input_or_wrong_rank_is_a_precondition_error() -> None:
    m = shape_chain_model()
    with pytest.raises(PreconditionError, match="no graph input 'ids'"):
        Fold(shape={"ids": (1, 2)}).requires(m)
    with pytest.raises(PreconditionError, match="rank 3"):
        Fold(shape={"x": (1, 2)}).requires(m)
