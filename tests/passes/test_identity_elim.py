import numpy as np
import pytest
from graphs import initializer, model, tensor, text_model
from onnx import TensorProto, helper

from nlpress.ir.dump import dump_text
from nlpress.ir.verify import check, compare, make_feeds
from nlpress.passes.identity_elim import IdentityElim


def _noops():
    return text_model(
        """g (float[2, 6] x) => (float[3, 4] y)
            <int64[2] same = {0, -1}, int64[2] other = {3, 4}> {
            [id_in] a = Identity(x)
            [relu] r = Relu(a)
            [drop] d = Dropout(r)
            [cast] c = Cast<to = 1>(d)
            [reshape] s = Reshape(c, same)
            [real_reshape] t = Reshape(s, other)
            [id_out] y = Identity(t)
        }"""
    )


def test_removes_each_kind_of_noop_and_keeps_output_names():
    before = _noops()
    result = IdentityElim().run(before)
    graph = result.model.graph
    assert result.changed
    assert [n.name for n in graph.nodes] == ["relu", "real_reshape"]
    assert result.stats == {
        "removed_Cast": 1,
        "removed_Dropout": 1,
        "removed_Identity": 2,
        "removed_Reshape": 1,
        "removed": 5,
    }
    assert [o.name for o in graph.outputs] == ["y"]
    check(result.model)
    assert compare(before, result.model, make_feeds(before)).worst == 0.0


def test_the_rewrite_is_golden(golden):
    golden("identity-elim", dump_text(IdentityElim().run(_noops()).model))


def test_second_run_reports_unchanged():
    once = IdentityElim().run(_noops()).model
    again = IdentityElim().run(once)
    assert not again.changed
    assert again.stats["removed"] == 0
    assert dump_text(again.model) == dump_text(once)


@pytest.mark.parametrize(
    "node",
    [
        helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE),
        helper.make_node("Dropout", ["x", "ratio", "training"], ["y"]),
        helper.make_node("Reshape", ["x", "flat"], ["y"]),
    ],
)
def test_keeps_nodes_that_change_their_input(node):
    inputs = [tensor("x", [2, 6])]
    if node.op_type == "Dropout":
        inputs += [tensor("ratio", [], TensorProto.FLOAT), tensor("training", [], TensorProto.BOOL)]
    out_type = TensorProto.DOUBLE if node.op_type == "Cast" else TensorProto.FLOAT
    shape = [12] if node.op_type == "Reshape" else [2, 6]
    m = model(
        [helper.make_node("Neg", ["y"], ["z"]), node][::-1],
        inputs,
        [tensor("z", shape, out_type)],
        [initializer("flat", np.array([12], np.int64))],
    )
    assert not IdentityElim().run(m).changed
