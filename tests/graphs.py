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


# Weights of one FFN block: up [hidden, inner], its bias [inner], down [inner, hidden], its bias.
FfnWeights = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def ffn(
    x: Dims,
    blocks: Sequence[FfnWeights],
    activation: str = "Relu",
    gemm: bool = False,
    residual: bool = False,
) -> Model:
    """x -> per block: up (+ b) -> activation -> down (+ b) (+ the block's input) -> y.

    `activation` is an op, or `erf-gelu` for GELU decomposed as exporters write it
    (`x * (erf(x / sqrt 2) + 1) * 0.5`). With `gemm`, up and down are Gemm (transB, bias
    inside) on 2-D inputs. Block i is numbered from 1 when there are several: nodes `up{i}`,
    `up{i}_bias`, `down{i}`, `down{i}_bias`, `residual{i}`; weights `up{i}_w`, `up{i}_b`,
    `down{i}_w`, `down{i}_b`.
    """
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    source = "x"
    for index, weights_ in enumerate(blocks, start=1):
        suffix = str(index) if len(blocks) > 1 else ""
        block_nodes, block_inits = _ffn_block(source, suffix, weights_, activation, gemm)
        nodes += block_nodes
        inits += block_inits
        source = nodes[-1].output[0]
        if residual:
            add = helper.make_node("Add", [source, _input(nodes, suffix)], [f"y{suffix}"])
            nodes.append(add)
            add.name, source = f"residual{suffix}", add.output[0]
    _rename(nodes, source, "y")
    return model(nodes, [tensor("x", x)], [tensor("y", x)], inits)


def _ffn_block(
    source: str, s: str, weights_: FfnWeights, activation: str, gemm: bool
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """One block: up -> hb{s}, activation -> r{s}, down -> f{s}."""
    up_w, up_b, down_w, down_b = weights_
    if gemm:
        inits = [initializer(f"up{s}_w", up_w.T.copy()), initializer(f"down{s}_w", down_w.T.copy())]
        inits += [initializer(f"up{s}_b", up_b), initializer(f"down{s}_b", down_b)]
        up = [_gemm(source, f"up{s}", f"hb{s}")]
        down = [_gemm(f"r{s}", f"down{s}", f"f{s}")]
    else:
        inits = [initializer(f"{n}{s}_{p}", v) for n, p, v in _named(weights_)]
        up = [
            helper.make_node("MatMul", [source, f"up{s}_w"], [f"h{s}"], name=f"up{s}"),
            helper.make_node("Add", [f"h{s}", f"up{s}_b"], [f"hb{s}"], name=f"up{s}_bias"),
        ]
        down = [
            helper.make_node("MatMul", [f"r{s}", f"down{s}_w"], [f"o{s}"], name=f"down{s}"),
            helper.make_node("Add", [f"o{s}", f"down{s}_b"], [f"f{s}"], name=f"down{s}_bias"),
        ]
    act_nodes, act_inits = _activation(f"hb{s}", f"r{s}", s, activation)
    return [*up, *act_nodes, *down], [*inits, *act_inits]


def _gemm(source: str, name: str, output: str) -> onnx.NodeProto:
    inputs = [source, f"{name}_w", f"{name}_b"]
    return helper.make_node("Gemm", inputs, [output], name=name, transB=1)


def _named(weights_: FfnWeights) -> list[tuple[str, str, np.ndarray]]:
    up_w, up_b, down_w, down_b = weights_
    return [("up", "w", up_w), ("up", "b", up_b), ("down", "w", down_w), ("down", "b", down_b)]


def _activation(
    x: str, y: str, s: str, activation: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    if activation != "erf-gelu":
        return [helper.make_node(activation, [x], [y], name=f"{activation.lower()}{s}")], []
    nodes = [
        helper.make_node("Div", [x, f"sqrt2{s}"], [f"d{s}"], name=f"div{s}"),
        helper.make_node("Erf", [f"d{s}"], [f"e{s}"], name=f"erf{s}"),
        helper.make_node("Add", [f"e{s}", f"one{s}"], [f"e1{s}"], name=f"add1{s}"),
        helper.make_node("Mul", [x, f"e1{s}"], [f"m{s}"], name=f"mul{s}"),
        helper.make_node("Mul", [f"m{s}", f"half{s}"], [y], name=f"half_mul{s}"),
    ]
    constants = {"sqrt2": 1.4142135, "one": 1.0, "half": 0.5}
    return nodes, [initializer(f"{k}{s}", np.array(v, np.float32)) for k, v in constants.items()]


def _input(nodes: list[onnx.NodeProto], suffix: str) -> str:
    """The tensor that block `suffix`'s up projection reads."""
    return next(n.input[0] for n in nodes if n.name == f"up{suffix}")


def _rename(nodes: list[onnx.NodeProto], old: str, new: str) -> None:
    for node in nodes:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
