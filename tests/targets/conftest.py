"""Shared helpers for the target tests: tiny models."""

from __future__ import annotations

import graphs
import pytest
from onnx import TensorProto, helper

from nlpress.ir import Model


@pytest.fixture(scope="session")
def tiny_model() -> Model:
    """MatMul+Relu on a symbolic batch, plus an int64 input cast to float: two outputs."""
    return graphs.model(
        [
            helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
            helper.make_node("Relu", ["y"], ["z"], name="relu"),
            helper.make_node("Cast", ["ids"], ["idf"], name="cast", to=TensorProto.FLOAT),
        ],
        [graphs.tensor("x", ["batch", 8]), graphs.tensor("ids", ["batch", 3], TensorProto.INT64)],
        [graphs.tensor("z", ["batch", 4]), graphs.tensor("idf", ["batch", 3])],
        [graphs.initializer("W", graphs.weights([8, 4]))],
    )
