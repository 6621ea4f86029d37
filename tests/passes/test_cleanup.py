import numpy as np
from graphs import initializer, model, tensor, weights
from onnx import TensorProto, helper

from nlpress.ir.dump import dump_text
from nlpress.ir.verify import check, make_feeds, run
from nlpress.passes.cleanup import Cleanup


def _messy():
    return model(
        [
            helper.make_node("Neg", ["h"], ["y"], name="neg"),  # out of order
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Relu", ["x"], ["dead"], name="dead_relu"),
            helper.make_node("Add", ["dead", "b"], ["dead2"], name="dead_add"),
        ],
        [tensor("x", [2, 4]), tensor("unused_input", [3], TensorProto.INT64)],
        [tensor("y", [2, 3])],
        [
            initializer("w", weights([4, 3])),
            initializer("b", weights([4])),
            initializer("orphan", np.zeros(5, np.float32)),
        ],
        checked=False,
    )


def test_removes_dead_nodes_and_initializers_and_sorts():
    before = _messy()
    result = Cleanup().run(before)
    graph = result.model.graph
    assert result.changed
    assert [n.name for n in graph.nodes] == ["mm", "neg"]
    assert result.stats == {"nodes_removed": 2, "initializers_removed": 2, "inputs_removed": 0}
    assert sorted(i.name for i in result.model.to_onnx().graph.initializer) == ["w"]
    assert [i.name for i in graph.inputs] == ["x", "unused_input"]
    check(result.model)
    feeds = make_feeds(result.model)
    np.testing.assert_array_equal(run(result.model, feeds)["y"], -(feeds["x"] @ weights([4, 3])))
    assert len(before.graph.nodes) == 4, "the input model is left as it was"


def test_second_run_reports_unchanged():
    once = Cleanup().run(_messy()).model
    again = Cleanup().run(once)
    assert not again.changed
    assert dump_text(again.model) == dump_text(once)


def test_unused_inputs_only_on_request():
    result = Cleanup(remove_unused_inputs=True).run(_messy())
    assert [i.name for i in result.model.graph.inputs] == ["x"]
    assert result.stats["inputs_removed"] == 1
