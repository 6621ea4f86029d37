from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import build, initializer, model, tensor, weights
from onnx import TensorProto, helper

from nlpress.ir import Model
from nlpress.ir.verify import check, compare, make_feeds
from nlpress.passes import PreconditionError, parse
from nlpress.passes.fold import Fold
from nlpress.passes.registry import NAMED_PIPELINES

I64 = TensorProto.INT64


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
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["b", "axes"], ["b1"]),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["b1", "n1", "heads"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [
        initializer("zero", np.array(0, np.int64)),
        initializer("one", np.array(1, np.int64)),
        initializer("axes", np.array([0], np.int64)),
        initializer("heads", np.array([4, 8], np.int64)),
    ]
    x = tensor("x", [batch, "seq", 32])
    return model(nodes, [x], [tensor("y", [batch, "seq", 4, 8])], inits)


def test_constant_subgraph_folds_to_one_initializer() -> None:
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("Mul", ["wt", "two"], ["w2"]),
        helper.make_node("MatMul", ["x", "w2"], ["y"]),
    ]
    inits = [initializer("w", weights([8, 4])), initializer("two", np.float32(2.0))]
    m = model(nodes, [tensor("x", [2, 4])], [tensor("y", [2, 8])], inits)
    out = folds_exactly(m)
    assert ops(out) == ["MatMul"]


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


def test_symbolic_shapes_keep_batch_and_fold_the_rest() -> None:
    m = shape_chain_model()
    out = folds_exactly(m, dims={"batch": 3, "seq": 7})
    assert ops(out) == ["Reshape"]
    assert np.asarray(out.graph.nodes[0].inputs[1].values).tolist() == [0, 0, 4, 8]
    assert out.graph.inputs[0].shape == ["batch", "seq", 32]


def test_noops_are_removed() -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Cast", ["a"], ["b"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["b", "one"], ["c"]),
        helper.make_node("Where", ["yes", "c", "zero"], ["d"]),
        helper.make_node("Dropout", ["d"], ["e"]),
        helper.make_node("Relu", ["e"], ["y"]),
    ]
    inits = [
        initializer("one", np.float32(1.0)),
        initializer("zero", np.float32(0.0)),
        initializer("yes", np.array(True)),
    ]
    m = model(nodes, [tensor("x", ["n", 4])], [tensor("y", ["n", 4])], inits)
    assert ops(folds_exactly(m)) == ["Relu"]


def test_commutative_constant_goes_second_keeping_matmul_bias_pattern() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["b", "m"], ["y"]),
    ]
    inits = [initializer("w", weights([4, 8])), initializer("b", weights([8], seed=1))]
    m = model(nodes, [tensor("x", ["n", 4])], [tensor("y", ["n", 8])], inits)
    out = folds_exactly(m)
    matmul, add = out.graph.nodes
    assert matmul.op == "MatMul" and isinstance(matmul.inputs[1], type(add.inputs[1]))
    assert add.inputs[0] is matmul.outputs[0] and add.inputs[1].name == "b"


def test_identical_initializers_and_nodes_are_merged() -> None:
    nodes = [
        helper.make_node("Add", ["x", "c1"], ["a"]),
        helper.make_node("Add", ["x", "c2"], ["b"]),
        helper.make_node("Mul", ["a", "b"], ["y"]),
    ]
    value = weights([4])
    inits = [initializer("c1", value), initializer("c2", value.copy())]
    m = model(nodes, [tensor("x", ["n", 4])], [tensor("y", ["n", 4])], inits)
    assert ops(folds_exactly(m)) == ["Add", "Mul"]


def layer_norm_nodes() -> list[onnx.NodeProto]:
    return [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["n"]),
        helper.make_node("Mul", ["n", "gamma"], ["g"]),
        helper.make_node("Add", ["g", "beta"], ["y"]),
    ]


def test_decomposed_layer_norm_becomes_layer_normalization() -> None:
    inits = [
        initializer("two", np.float32(2.0)),
        initializer("eps", np.float32(1e-5)),
        initializer("gamma", weights([16], seed=2)),
        initializer("beta", weights([16], seed=3)),
    ]
    m = model(
        layer_norm_nodes(), [tensor("x", ["n", 16])], [tensor("y", ["n", 16])], inits, opset=13
    )
    assert "LayerNormalization" not in ops(folds_exactly(m))
    m17 = model(layer_norm_nodes(), [tensor("x", ["n", 16])], [tensor("y", ["n", 16])], inits)
    assert ops(folds_exactly(m17)) == ["LayerNormalization"]


def gelu_nodes() -> list[onnx.NodeProto]:
    return [
        helper.make_node("Div", ["x", "sqrt2"], ["s"]),
        helper.make_node("Erf", ["s"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["m"]),
        helper.make_node("Mul", ["m", "half"], ["y"]),
    ]


@pytest.mark.parametrize(
    ("opset", "expected"), [(17, ["Div", "Erf", "Add", "Mul", "Mul"]), (20, ["Gelu"])]
)
def test_erf_gelu_becomes_gelu_only_where_the_opset_has_it(opset: int, expected: list[str]) -> None:
    inits = [
        initializer("sqrt2", np.float32(np.sqrt(2.0))),
        initializer("one", np.float32(1.0)),
        initializer("half", np.float32(0.5)),
    ]
    m = Model.from_onnx(
        build(gelu_nodes(), [tensor("x", ["n", 8])], [tensor("y", ["n", 8])], inits, opset=opset)
    )
    assert ops(folds_exactly(m)) == expected


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
