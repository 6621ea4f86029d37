import numpy as np
from graphs import initializer, model, tensor, weights
from onnx import helper

from nlpress.ir import Model
from nlpress.ir.graph import bypass, constant_value, weighted_matmuls
from nlpress.ir.verify import check, compare, make_feeds


def _relu_identity(output_from_identity: bool) -> Model:
    return model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("Identity", ["r"], ["y"], name="id"),
            helper.make_node("Neg", ["r"], ["z"], name="neg"),
        ],
        [tensor("x", [2, 3])],
        [tensor("y", [2, 3]), tensor("z", [2, 3])],
    )


def test_bypass_keeps_the_graph_output_name():
    original = _relu_identity(True)
    rewritten = original.copy()
    graph = rewritten.graph
    identity = next(n for n in graph.nodes if n.op == "Identity")
    assert bypass(graph, identity, identity.inputs[0], identity.outputs[0])
    assert [n.op for n in graph.nodes] == ["Relu", "Neg"]
    assert [o.name for o in graph.outputs] == ["y", "z"]
    check(rewritten)
    assert compare(original, rewritten, make_feeds(original)).worst == 0.0


def test_bypass_refuses_when_input_is_a_graph_input():
    m = model([helper.make_node("Identity", ["x"], ["y"])], [tensor("x", [2])], [tensor("y", [2])])
    node = m.graph.nodes[0]
    assert not bypass(m.graph, node, node.inputs[0], node.outputs[0])
    assert len(m.graph.nodes) == 1


def test_weighted_matmuls_finds_matmul_and_gemm_with_constant_weights():
    m = model(
        [
            helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
            helper.make_node("Gemm", ["a", "wt", "b"], ["g"], name="gemm", transB=1),
            helper.make_node("MatMul", ["g", "g2"], ["y"], name="act_act"),
        ],
        [tensor("x", [2, 4]), tensor("g2", [3, 3])],
        [tensor("y", [2, 3])],
        [
            initializer("w", weights([4, 5])),
            initializer("wt", weights([3, 5])),
            initializer("b", weights([3])),
        ],
    )
    found = list(weighted_matmuls(m.graph))
    assert [f.node.name for f in found] == ["mm", "gemm"]
    assert not found[0].transposed and found[1].transposed
    assert found[1].bias is not None and found[1].bias.name == "b"


def test_constant_value_reads_constant_nodes():
    m = model(
        [
            helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", 7, [2], [3, 4])),
            helper.make_node("Reshape", ["x", "c"], ["y"]),
        ],
        [tensor("x", [12])],
        [tensor("y", [3, 4])],
    )
    reshape = m.graph.nodes[1]
    np.testing.assert_array_equal(constant_value(reshape.inputs[1]), [3, 4])
    assert constant_value(reshape.inputs[0]) is None
