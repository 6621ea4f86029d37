import numpy as np
from graphs import text_model

from nlpress.ir.dump import dump_text
from nlpress.ir.verify import check, make_feeds, run
from nlpress.passes.cleanup import Cleanup

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 4


def _messy():
    """Nodes out of order, a dead branch, an orphan initializer and an unused input."""
    return text_model(
        """g (float[2, 4] x, int64[3] unused_input) => (float[2, 3] y)
            <float[4, 3] w = {0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.25, 2.5, 2.75},
             float[4] b = {1, 2, 3, 4}, float[5] orphan = {0, 0, 0, 0, 0}> {
            [neg] y = Neg(h)
            [mm] h = MatMul(x, w)
            [dead_relu] dead = Relu(x)
            [dead_add] dead2 = Add(dead, b)
        }""",
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
    np.testing.assert_array_equal(run(result.model, feeds)["y"], -(feeds["x"] @ W))
    assert len(before.graph.nodes) == 4, "the input model is left as it was"


def test_the_rewrite_is_golden(golden):
    golden("cleanup", dump_text(Cleanup().run(_messy()).model))


def test_second_run_reports_unchanged():
    once = Cleanup().run(_messy()).model
    again = Cleanup().run(once)
    assert not again.changed
    assert dump_text(again.model) == dump_text(once)


def test_unused_inputs_only_on_request():
    result = Cleanup(remove_unused_inputs=True).run(_messy())
    assert [i.name for i in result.model.graph.inputs] == ["x"]
    assert result.stats["inputs_removed"] == 1
