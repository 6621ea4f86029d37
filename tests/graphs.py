"""A shared builder of tiny ONNX graphs for tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx.parser
from onnx import TensorProto, helper, numpy_helper

from nlpress.ir import Model

OPSET = 17

Dims = Sequence[int | str]


def tensor(name: str, shape: Dims, elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """A graph input or output with a (possibly symbolic) shape."""
    return helper.make_tensor_value_info(name, elem_type, list(shape))


def initializer(name: str, value: np.ndarray) -> onnx.TensorProto:
    """A constant weight."""
    return numpy_helper.from_array(np.asarray(value), name)


def build(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = OPSET,
    checked: bool = True,
) -> onnx.ModelProto:
    """A ModelProto of the given nodes, checked unless asked not to (e.g. for unsorted nodes)."""
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs), list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    if checked:
        onnx.checker.check_model(proto, full_check=True)
    return proto


def model(*args: object, **kwargs: object) -> Model:
    """Like `build`, imported into the IR."""
    return Model.from_onnx(build(*args, **kwargs))  # type: ignore[arg-type]


def weights(shape: Dims, seed: int = 0) -> np.ndarray:
    """Seeded float32 weights."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def text_model(body: str, opset: int = OPSET, checked: bool = True) -> Model:
    """A model written in ONNX's text syntax (`onnx.parser`), imported into the IR.

    `body` is the graph, e.g. `g (float[N, 4] x) => (float[N, 4] y) { [relu] y = Relu(x) }`;
    the header with IR version 8 and the default domain at `opset` is prepended. The model is
    checked unless asked not to (e.g. for unsorted nodes).
    """
    header = f'<ir_version: 8, opset_import: ["" : {opset}]>\n'
    proto = onnx.parser.parse_model(header + body)
    if checked:
        onnx.checker.check_model(proto, full_check=True)
    return Model.from_onnx(proto)


def weights_text(shape: Dims, seed: int = 0) -> str:
    """Seeded weights (as `weights`, to 6 significant digits) as an ONNX text literal `{...}`."""
    return "{" + ", ".join(f"{v:.6g}" for v in weights(shape, seed).reshape(-1)) + "}"
