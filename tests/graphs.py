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


def weight_only_int8(proto: onnx.ModelProto, per_tensor: bool = False) -> onnx.ModelProto:
    """`proto` with each MatMul's float [k, n] initializer stored as symmetric int8 behind a
    DequantizeLinear (per column, or one scale), as weight-only quantized files carry them."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        w = onnx.numpy_helper.to_array(init) if init is not None else None
        if init is not None and w is not None and w.ndim == 2 and w.dtype == np.float32:
            peak = np.abs(w).max() if per_tensor else np.abs(w).max(axis=0)
            scale = (np.maximum(peak, 1e-8) / 127).astype(np.float32)
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            graph.initializer.remove(init)
            graph.initializer.extend(
                [initializer(f"{init.name}_q", q), initializer(f"{init.name}_s", scale),
                 initializer(f"{init.name}_zp", np.zeros_like(q[0] if scale.ndim else q[0, 0]))]
            )  # fmt: skip
            names = [f"{init.name}_q", f"{init.name}_s", f"{init.name}_zp"]
            nodes.append(helper.make_node("DequantizeLinear", names, [init.name], axis=1))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return out


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


def copied_ids_encoder(width: int = 8, vocab: int = 30522, seed: int = 0) -> Model:
    """A toy text encoder whose first output is an int64 copy of its input, as exporters write.

    Outputs: `ids` = Identity(input_ids) (int64 [batch, sequence]), then `tokens` =
    MatMul(Relu(MatMul(Gather(table, input_ids), w)), w2) (float [batch, sequence, width]).
    Weights `table`, `w` and `w2` are seeded by `seed`; the nodes are `copy`, `embed`,
    `up/MatMul`, `relu` and `down/MatMul`.
    """
    ids = ("batch", "sequence")
    nodes = [
        helper.make_node("Identity", ["input_ids"], ["ids"], name="copy"),
        helper.make_node("Gather", ["table", "input_ids"], ["rows"], name="embed"),
        helper.make_node("MatMul", ["rows", "w"], ["h"], name="up/MatMul"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["tokens"], name="down/MatMul"),
    ]
    inits = [
        initializer(name, weights(shape, seed + i))
        for i, (name, shape) in enumerate(
            [("table", [vocab, width]), ("w", [width, 2 * width]), ("w2", [2 * width, width])]
        )
    ]
    outputs = [tensor("ids", ids, TensorProto.INT64), tensor("tokens", [*ids, width])]
    return model(nodes, [tensor("input_ids", ids, TensorProto.INT64)], outputs, inits)


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


# ---- int8 QDQ graphs, as quantize-insert writes them ----------------------------------------


def quantize_matmuls(
    proto: onnx.ModelProto, dynamic: bool = True, embeddings: bool = False
) -> onnx.ModelProto:
    """QDQ every MatMul with a 2-D float initializer weight, as quantize-insert does.

    Weights: symmetric per-column int8. Activations: DynamicQuantizeLinear (dynamic) or
    QuantizeLinear with a fixed scale 0.05 and zero-point 128 (static). With `embeddings`, the
    2-D tables that Gathers read become int8 too (symmetric, one scale per row).
    """
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    weights = {i.name: i for i in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        table = weights.get(node.input[0]) if node.op_type == "Gather" and embeddings else None
        if table is not None and len(table.dims) == 2:
            nodes += _quantized_table(graph, table, f"qdq{index}")
            nodes.append(helper.make_node("Gather", [f"qdq{index}_t", node.input[1]], node.output))
            continue
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        scale = np.maximum(np.abs(w).max(axis=0), 1e-12).astype(np.float32) / 127
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        p = f"qdq{index}"
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{p}_wq"),
                numpy_helper.from_array(scale, f"{p}_ws"),
                numpy_helper.from_array(np.zeros(w.shape[1], np.int8), f"{p}_wzp"),
            ]
        )
        dq = [f"{p}_xq", f"{p}_xs", f"{p}_xzp"]
        if dynamic:
            nodes.append(helper.make_node("DynamicQuantizeLinear", [node.input[0]], dq))
        else:
            graph.initializer.extend(
                [
                    numpy_helper.from_array(np.float32(0.05), dq[1]),
                    numpy_helper.from_array(np.uint8(128), dq[2]),
                ]
            )
            nodes.append(helper.make_node("QuantizeLinear", [node.input[0], *dq[1:]], dq[:1]))
        nodes.append(helper.make_node("DequantizeLinear", dq, [f"{p}_x"]))
        nodes.append(
            helper.make_node(
                "DequantizeLinear", [f"{p}_wq", f"{p}_ws", f"{p}_wzp"], [f"{p}_w"], axis=1
            )
        )
        nodes.append(helper.make_node("MatMul", [f"{p}_x", f"{p}_w"], node.output, name=node.name))
    del graph.node[:]
    graph.node.extend(nodes)
    return proto


def _quantized_table(
    graph: onnx.GraphProto, table: onnx.TensorProto, p: str
) -> list[onnx.NodeProto]:
    t = numpy_helper.to_array(table)
    scale = np.maximum(np.abs(t).max(axis=1), 1e-12).astype(np.float32) / 127
    q = np.clip(np.round(t / scale[:, None]), -127, 127).astype(np.int8)
    names = [f"{p}_tq", f"{p}_ts", f"{p}_tzp"]
    graph.initializer.extend(
        [
            numpy_helper.from_array(q, names[0]),
            numpy_helper.from_array(scale, names[1]),
            numpy_helper.from_array(np.zeros(len(scale), np.int8), names[2]),
        ]
    )
    return [helper.make_node("DequantizeLinear", names, [f"{p}_t"], axis=0)]


def qdq_matmul(
    m: int | str,
    k: int,
    n: int,
    *,
    lead: int | str = 1,
    dynamic: bool = False,
    bias: bool = True,
    scales: tuple[float, float] | None = None,
    zero_point: int = 131,
    per_tensor: bool = False,
    seed: int = 0,
) -> onnx.ModelProto:
    """x[lead, m, k] -> QDQ -> MatMul(W_q[k, n]) (+ bias) -> Relu.

    `scales` = (s_x, s_w) fixes both scales (s_w for every column), else they are random.
    """
    rng = np.random.default_rng(seed)
    wq = rng.integers(-127, 128, (k, n)).astype(np.int8)
    ws = rng.uniform(0.001, 0.01, n).astype(np.float32)
    x_scale = 0.05
    if scales is not None:
        x_scale, ws = scales[0], np.full(n, scales[1], dtype=np.float32)
    if per_tensor:
        ws = np.float32(ws[0])
    inits = [
        initializer("wq", wq),
        initializer("ws", ws),
        initializer("wzp", np.zeros(np.shape(ws), np.int8)),
        initializer("b", rng.standard_normal(n).astype(np.float32)),
    ]
    dq = ["xq", "xs", "xzp"]
    if dynamic:
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], dq)]
    else:
        inits += [
            initializer("xs", np.float32(x_scale)),
            initializer("xzp", np.uint8(zero_point)),
        ]
        nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"])]
    nodes += [
        helper.make_node("DequantizeLinear", dq, ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    last = "y"
    if bias:
        nodes.append(helper.make_node("Add", ["y", "b"], ["yb"]))
        last = "yb"
    nodes.append(helper.make_node("Relu", [last], ["out"]))
    inputs = [tensor("x", [lead, m, k])]
    return build(nodes, inputs, [tensor("out", [lead, m, n])], inits, opset=21)


def exact_qdq_case(
    m: int | str,
    k: int,
    n: int,
    lead: int | str = 1,
    zero_point: int = 131,
    seed: int = 0,
    weight_seed: int = 0,
    symbolic_rows: int = 13,
) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A `qdq_matmul` with unit scales and no bias, integral x and its exact output.

    x holds integers in [-zero_point, 256 - zero_point), so that quantizing it is exact, and the
    output is relu(x @ W_q) in int32 arithmetic. A symbolic lead is run as 3, a symbolic m as
    `symbolic_rows`.
    """
    scales = (1.0, 1.0)
    proto = qdq_matmul(
        m, k, n, lead=lead, bias=False, scales=scales, zero_point=zero_point, seed=weight_seed
    )
    wq = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "wq"))
    batch = 3 if isinstance(lead, str) else lead
    rows = symbolic_rows if isinstance(m, str) else m
    rng = np.random.default_rng(seed)
    x = rng.integers(-zero_point, 256 - zero_point, (batch, rows, k)).astype(np.int32)
    expected = np.maximum(x @ wq.astype(np.int32), 0).astype(np.float32)
    return proto, x.astype(np.float32), expected
