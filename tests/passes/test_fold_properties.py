"""Property: on random small graphs of elementwise, shape and MatMul ops, fold keeps outputs."""

from __future__ import annotations

import numpy as np
from graphs import initializer, model, tensor
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from nlpress.ir.verify import compare, make_feeds
from nlpress.passes.fold import Fold

UNARY = ["Relu", "Neg", "Abs", "Tanh", "Identity", "Sigmoid"]
BINARY = ["Add", "Sub", "Mul", "Max"]


@st.composite
def graphs(draw: st.DrawFn) -> tuple[object, bool]:
    static = draw(st.booleans())
    n = 3
    nodes, inits = [], []
    live = ["x"]  # every tensor is [batch, n]
    consts = 0
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["unary", "binary", "const", "shape", "matmul"]))
        a = draw(st.sampled_from(live))
        out = f"t{i}"
        if kind == "unary":
            nodes.append(helper.make_node(draw(st.sampled_from(UNARY)), [a], [out]))
        elif kind == "binary":
            b = draw(st.sampled_from(live))
            nodes.append(helper.make_node(draw(st.sampled_from(BINARY)), [a, b], [out]))
        elif kind == "const":
            name = f"c{consts}"
            consts += 1
            value = draw(st.sampled_from([0.0, 1.0, 2.0, -0.5]))
            shape = draw(st.sampled_from([(), (n,), (1, n)]))
            inits.append(initializer(name, np.full(shape, value, np.float32)))
            first = draw(st.booleans())
            op = draw(st.sampled_from(BINARY))
            nodes.append(helper.make_node(op, [name, a] if first else [a, name], [out]))
        elif kind == "shape":
            s, t = f"s{i}", f"r{i}"
            nodes.append(helper.make_node("Shape", [a], [s]))
            nodes.append(helper.make_node("Reshape", [a, s], [t]))
            nodes.append(helper.make_node("Transpose", [t], [f"u{i}"], perm=[1, 0]))
            nodes.append(helper.make_node("Transpose", [f"u{i}"], [out], perm=[1, 0]))
        else:
            name = f"w{i}"
            w = np.random.default_rng(i).standard_normal((n, n)).astype(np.float32)
            inits.append(initializer(name, w))
            nodes.append(helper.make_node("MatMul", [a, name], [out]))
        live.append(out)
    nodes.append(helper.make_node("Identity", [live[-1]], ["y"]))
    batch: int | str = 2 if static else "batch"
    m = model(nodes, [tensor("x", [batch, n])], [tensor("y", [batch, n], TensorProto.FLOAT)], inits)
    return m, static


@settings(max_examples=40, deadline=None)
@given(graphs())
def test_fold_keeps_outputs_on_random_graphs(case: tuple[object, bool]) -> None:
    m, static = case
    p = Fold(shape={"x": (2, 3)}) if static else Fold()
    result = p.run(m)  # type: ignore[arg-type]
    feeds = make_feeds(m, dims={"batch": 2}, seed=3)  # type: ignore[arg-type]
    assert compare(m, result.model, feeds).worst <= 1e-6  # type: ignore[arg-type]
    assert not p.run(result.model).changed
