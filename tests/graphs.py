"""A shared builder of tiny ONNX graphs for tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

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


def calibrated(m: Model, feeds: Sequence[Mapping[str, np.ndarray]]) -> Model:
    """`m` carrying `feeds` as its calibration batches."""
    return dataclasses.replace(m, calibration=tuple(feeds))


def dense(
    x: Dims,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = "Relu",
    then: np.ndarray | None = None,
    opset: int = OPSET,
) -> Model:
    """x[..., k] -> MatMul(w[k, n]) (+ b) (-> activation) (-> MatMul(w2[n, m])) -> y.

    Nodes are named `dense/MatMul`, `dense/Add`, the activation's op in lower case and
    `out/MatMul`; weights `w`, `b` and `w2`.
    """
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="dense/MatMul")]
    inits = [initializer("w", weight)]
    last = "h"
    if bias is not None:
        nodes.append(helper.make_node("Add", ["h", "b"], ["hb"], name="dense/Add"))
        inits.append(initializer("b", bias))
        last = "hb"
    if activation is not None:
        nodes.append(helper.make_node(activation, [last], ["r"], name=activation.lower()))
        last = "r"
    width = weight.shape[1]
    if then is not None:
        nodes.append(helper.make_node("MatMul", [last, "w2"], ["o"], name="out/MatMul"))
        inits.append(initializer("w2", then))
        last, width = "o", then.shape[1]
    nodes[-1].output[0] = "y"
    y = tensor("y", [*list(x)[:-1], width])
    return model(nodes, [tensor("x", x)], [y], inits, opset=opset)


def embedding(
    table: np.ndarray,
    ids: Dims = ("batch", "sequence"),
    ids_name: str = "ids",
    cast: bool = False,
) -> Model:
    """Token ids (through a Cast to int32 if asked, as exporters often write them) -> Gather(T).

    The nodes are named `cast` and `embed`, the table `table`, the output `rows`.
    """
    source = "ids32" if cast else ids_name
    nodes = [helper.make_node("Gather", ["table", source], ["rows"], name="embed")]
    if cast:
        to = TensorProto.INT32
        nodes.insert(0, helper.make_node("Cast", [ids_name], [source], name="cast", to=to))
    return model(
        nodes,
        [tensor(ids_name, ids, TensorProto.INT64)],
        [tensor("rows", [*ids, table.shape[1]])],
        [initializer("table", table)],
    )
