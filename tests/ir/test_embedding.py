import dataclasses

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from graphs import copied_ids_encoder, initializer, model, tensor, weights
from onnx import TensorProto, helper

from nlpress.ir.embedding import (
    KEY,
    EmbeddingOutputError,
    declared,
    embedding_of,
    embedding_output,
    is_floating,
    recorded,
)
from nlpress.ir.verify import session

IDS = ("batch", "sequence")
# Each output an exporter may write, as (node, ONNX type, shape), all read from `input_ids`.
KINDS = {
    "ids": (helper.make_node("Identity", ["input_ids"], ["ids"]), TensorProto.INT64, IDS),
    "tokens": (helper.make_node("Gather", ["table", "input_ids"], ["tokens"]), 1, (*IDS, 4)),
    "states": (helper.make_node("Relu", ["tokens"], ["states"]), 1, (*IDS, 4)),
    "pooled": (
        helper.make_node("ReduceMean", ["tokens"], ["pooled"], axes=[1], keepdims=0),
        1,
        ("batch", 4),
    ),
    "pooler": (helper.make_node("Tanh", ["pooled"], ["pooler"]), 1, ("batch", 4)),
}


def encoder(*outputs):
    """A model whose outputs are `outputs` (keys of KINDS), in that order."""
    needed = {"tokens", *outputs} | ({"pooled"} if "pooler" in outputs else set())
    nodes = [node for name, (node, _, _) in KINDS.items() if name in needed]
    declared_outputs = [tensor(name, KINDS[name][2], KINDS[name][1]) for name in outputs]
    inputs = [tensor("input_ids", IDS, TensorProto.INT64)]
    return model(nodes, inputs, declared_outputs, [initializer("table", weights([100, 4]))])


@pytest.mark.parametrize(
    ("outputs", "chosen"),
    [
        (("ids", "tokens"), "tokens"),  # an integer copy of the input first, embeddings second
        (("tokens", "pooler"), "tokens"),  # a BERT export: token states before the pooler
        (("pooler", "tokens"), "tokens"),  # the token embeddings, wherever they stand
        (("ids", "pooled"), "pooled"),  # only a pooled embedding
        (("ids", "tokens", "pooled"), "tokens"),  # a sentence-transformers export
    ],
)
def test_the_embedding_is_the_one_float_output_shaped_like_one(outputs, chosen):
    m = encoder(*outputs)
    assert embedding_of(m).name == chosen
    assert embedding_of(session(m)).name == chosen


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (("tokens", "states"), "2 floating-point outputs shaped as token embeddings"),
        (("ids", "pooled", "pooler"), "2 floating-point outputs shaped as pooled"),
        (("ids",), "no output of the model (ids) is one floating-point tensor"),
    ],
)
def test_two_candidates_or_none_ask_for_a_name(outputs, message):
    with pytest.raises(EmbeddingOutputError, match=r"name the embedding with --embedding NAME"):
        embedding_of(encoder(*outputs))
    with pytest.raises(EmbeddingOutputError) as raised:
        embedding_of(session(encoder(*outputs)))
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_named_output_wins_and_a_model_can_declare_it():
    m = encoder("tokens", "states")
    assert embedding_of(m, "states").name == "states"
    declaring = dataclasses.replace(m, metadata={KEY: "states"})
    assert declared(declaring) == "states" == declared(session(declaring))
    assert embedding_of(declaring).name == "states" == embedding_of(session(declaring)).name
    assert embedding_of(declaring, "tokens").name == "tokens"  # the caller's name wins


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", "--embedding missing: the model has no output of that name (its outputs: "),
        ("ids", "--embedding ids: that output holds int64, not floating-point embeddings"),
    ],
)
def test_a_wrong_name_is_one_line(name, message):
    with pytest.raises(EmbeddingOutputError, match=message.replace("(", r"\(")):
        embedding_of(encoder("ids", "tokens"), name)


def test_graphs_sessions_and_manifests_pick_the_same_output():
    m = copied_ids_encoder()
    assert embedding_output(m.graph.outputs).name == "tokens"
    assert embedding_output(session(m).get_outputs()).name == "tokens"
    manifest = [
        {"name": "ids", "dtype": "int64", "shape": list(IDS)},
        {"name": "tokens", "dtype": "float32", "shape": [*IDS, 8]},
    ]
    assert embedding_output(manifest)["name"] == "tokens"
    assert embedding_output([gs.Variable("y", dtype=np.float32)]).name == "y"  # rank unknown


def test_a_manifest_records_the_chosen_embedding_and_nothing_when_ambiguous():
    entries = [{"name": n, "dtype": "float32", "shape": [*IDS, 4]} for n in ("a", "b")]
    assert recorded({"author": "x"}, entries[:1]) == {"author": "x", KEY: "a"}
    assert recorded({}, entries) == {}
    assert recorded({KEY: "b"}, entries) == {KEY: "b"}


def test_every_float_type_counts_and_nothing_else_does():
    bfloat16 = helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16)
    floats = [np.float32, np.float64, np.float16, bfloat16, "float", "tensor(double)"]
    assert all(is_floating(d) for d in floats)
    others = [np.int64, np.int8, np.bool_, "tensor(string)", "floats", TensorProto.INT8, True]
    assert not any(is_floating(d) for d in others)
