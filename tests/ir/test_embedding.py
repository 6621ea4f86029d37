import numpy as np
import onnx_graphsurgeon as gs
import pytest
from graphs import copied_ids_encoder
from onnx import TensorProto, helper

from nlpress.ir.embedding import embedding_index, embedding_output, is_floating
from nlpress.ir.verify import session


@pytest.mark.parametrize(
    ("dtypes", "index"),
    [
        ([np.int64, np.float32], 1),  # an integer copy of the input first, embeddings second
        (["tensor(int64)", "tensor(bool)", "tensor(float16)"], 2),  # as ONNX Runtime says them
        (["int64", "bfloat16"], 1),  # as an artifact's manifest says them
        ([TensorProto.INT64, TensorProto.DOUBLE], 1),  # ONNX type numbers
        ([np.float32, np.dtype("float16")], 0),  # all float: the first
        ([np.int64, "tensor(int32)", None], 0),  # none float: the first, as before
        ([], 0),
    ],
)
def test_the_embedding_is_the_first_floating_point_output(dtypes, index):
    assert embedding_index(dtypes) == index


def test_every_float_type_counts_and_nothing_else_does():
    bfloat16 = helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16)
    floats = [np.float32, np.float64, np.float16, bfloat16, "float", "tensor(double)"]
    assert all(is_floating(d) for d in floats)
    others = [np.int64, np.int8, np.bool_, "tensor(string)", "floats", TensorProto.INT8, True]
    assert not any(is_floating(d) for d in others)


def test_graphs_sessions_and_manifests_pick_the_same_output():
    m = copied_ids_encoder()
    assert embedding_output(m.graph.outputs).name == "tokens"
    assert embedding_output(session(m).get_outputs()).name == "tokens"
    manifest = [{"name": "ids", "dtype": "int64"}, {"name": "tokens", "dtype": "float32"}]
    assert embedding_output(manifest)["name"] == "tokens"
    assert embedding_output([gs.Variable("y", dtype=None)]).name == "y"
