"""fold rewrites ONNX Runtime's fused com.microsoft ops into the standard ops they fuse."""

import numpy as np
import pytest
from graphs import initializer, tensor, weights
from onnx import helper

import nlpress
from nlpress.compiler import CheckedSession
from nlpress.ir import Model, load_model
from nlpress.ir.verify import compare, make_feeds
from nlpress.passes.fold import Fold

CONTRIB = "com.microsoft"
WIDTH = 8


def _contrib(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, domain=CONTRIB, **attrs)


CASES = {
    "skip-layer-norm": [
        _contrib("SkipLayerNormalization", ["x", "s", "g", "b", "bias"], ["y"], epsilon=1e-6)
    ],
    "skip-layer-norm-sum-read": [
        _contrib("SkipLayerNormalization", ["x", "s", "g", "", ""], ["n", "", "", "sum"]),
        helper.make_node("Add", ["n", "sum"], ["y"]),
    ],
    "bias-gelu": [_contrib("BiasGelu", ["x", "bias"], ["y"])],
    "fast-gelu": [_contrib("FastGelu", ["x", "bias"], ["y"])],
    "gelu": [_contrib("Gelu", ["x"], ["y"])],
}


def _graph(nodes):
    inits = [
        initializer(name, weights([WIDTH], seed)) for seed, name in enumerate(("g", "b", "bias"))
    ]
    inputs = [tensor("x", ["n", WIDTH]), tensor("s", ["n", WIDTH])]
    graph = helper.make_graph(nodes, "contrib", inputs, [tensor("y", ["n", WIDTH])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(CONTRIB, 1)]
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = 8
    return Model.from_onnx(proto)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_contrib_op_becomes_standard_ops_with_its_results(case):
    m = _graph(CASES[case])
    result = Fold().run(m)
    assert result.stats["contrib_decomposed"] == 1
    assert all(n.domain in ("", None) for n in result.model.graph.nodes)
    feeds = {name: 3 * v for name, v in make_feeds(m, {"n": 5}, seed=2).items()}
    assert compare(m, result.model, feeds).worst <= 1e-5


def test_an_op_whose_statistics_are_read_stays_fused():
    nodes = [
        _contrib("SkipLayerNormalization", ["x", "s", "g"], ["n", "mean"]),
        helper.make_node("Add", ["n", "mean"], ["y"]),
    ]
    result = Fold().run(_graph(nodes))
    assert [n.op for n in result.model.graph.nodes] == ["SkipLayerNormalization", "Add"]


def test_an_ort_optimized_bert_compiles_and_matches_ort(tiny_bert_path, tmp_path):
    optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
    fused = optimizer.optimize_model(
        str(tiny_bert_path), model_type="bert", num_heads=4, hidden_size=64
    )
    assert {n.domain for n in fused.model.graph.node} >= {CONTRIB}
    path = tmp_path / "optimized.onnx"
    fused.save_model_to_file(str(path))
    artifact = nlpress.compile(str(path), "x86", tmp_path / "x86")
    session = nlpress.load(artifact)
    reference = CheckedSession(load_model(path))
    feeds = make_feeds(load_model(path), {"batch": 2, "sequence": 9}, int_high=2)
    for ours, theirs in zip(session.run(None, feeds), reference.run(None, feeds), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
