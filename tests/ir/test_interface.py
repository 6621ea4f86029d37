import graphs
import numpy as np
import pytest
from onnx import TensorProto, helper

from nlpress.ir import NlpressError, load_model
from nlpress.ir.interface import DimLimit, dim_limits, value_entry

INT = TensorProto.INT64


def _positions(kind: str, rows: int = 6, offset: int = 0) -> graphs.Model:
    """Position rows for ids [batch, sequence]: a Slice of a constant, or a Gather by a Range."""
    shape_nodes = [
        helper.make_node("Shape", ["ids"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["length"], axis=0),
    ]
    if kind == "slice":
        nodes = [
            helper.make_node("Unsqueeze", ["length", "zero_axis"], ["end"]),
            helper.make_node("Add", ["end", "offset"], ["shifted"]),
            helper.make_node("Slice", ["table", "start", "shifted", "zero_axis"], ["rows"]),
        ]
    else:
        nodes = [
            helper.make_node("Add", ["length", "offset_scalar"], ["limit"]),
            helper.make_node("Range", ["zero", "limit", "one"], ["positions"]),
            helper.make_node("Unsqueeze", ["positions", "zero_axis"], ["batched"]),
            helper.make_node("Gather", ["table", "batched"], ["rows"], axis=0),
        ]
    return graphs.model(
        shape_nodes + nodes,
        [graphs.tensor("ids", ["batch", "sequence"], INT)],
        [graphs.tensor("rows", [1, "?", 4] if kind == "gather" else ["?", 4])],
        [
            graphs.initializer("table", graphs.weights([rows, 4])),
            graphs.initializer("one", np.array(1, np.int64)),
            graphs.initializer("zero", np.array(0, np.int64)),
            graphs.initializer("zero_axis", np.array([0], np.int64)),
            graphs.initializer("start", np.array([0], np.int64)),
            graphs.initializer("offset", np.array([offset], np.int64)),
            graphs.initializer("offset_scalar", np.array(offset, np.int64)),
        ],
    )


@pytest.mark.parametrize("kind", ["slice", "gather"])
@pytest.mark.parametrize(("offset", "maximum"), [(0, 6), (2, 4)])
def test_a_constant_table_bounds_the_dim_that_reads_it(kind, offset, maximum):
    limits = dim_limits(_positions(kind, offset=offset).graph)
    assert list(limits) == ["sequence"]
    limit = limits["sequence"]
    assert limit.maximum == maximum
    assert "'table' of 6 rows" in limit.reason and f"({kind.capitalize()})" in limit.reason


def test_no_limit_without_symbolic_dims_or_tables():
    matmul = graphs.dense(["batch", 8], graphs.weights([8, 4]), activation=None)
    assert dim_limits(matmul.graph) == {}
    static = graphs.model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [graphs.tensor("x", [2, 3])],
        [graphs.tensor("y", [2, 3])],
    )
    assert dim_limits(static.graph) == {}


def test_the_position_table_of_bert(tiny_bert_path):
    limits = dim_limits(load_model(tiny_bert_path).graph)
    assert limits == {"sequence": DimLimit("sequence", 512, limits["sequence"].reason)}
    assert "512" in limits["sequence"].reason


def test_a_non_tensor_value_is_named():
    value = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    with pytest.raises(NlpressError, match="s: a sequence value"):
        value_entry(value)
