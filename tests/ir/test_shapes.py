"""The shape engine (`nlpress.ir.shapes`): symbolic shapes and small integer values.

Examples pin the rules op by op, and what the engine refuses to guess; the properties check it
against ONNX Runtime: a symbolic result, evaluated at the sizes of a run, is the shape (and for
small integer tensors the value) that the run produces.
"""

from __future__ import annotations

import math

import numpy as np
import onnx.parser
import pytest
from graphs import text_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlpress.ir import Model
from nlpress.ir.shapes import MAX_VALUE_SIZE, Info, analyze, broadcast
from nlpress.ir.symbolic import Dim, Poly, add, minimum, mul, symbol
from nlpress.ir.verify import make_feeds, run

BATCH, SEQUENCE = symbol("batch"), symbol("sequence")
PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def outputs_model(body: str, opset: int = 17) -> Model:
    """A model from ONNX text whose outputs declare no shape: what is known is the engine's."""
    m = text_model(body, opset, checked=False)
    for tensor in m.graph.outputs:
        tensor.shape = None
    return m


def infos(m: Model) -> dict[str, Info]:
    """What the engine knows about each graph output, by name."""
    shapes = analyze(m.graph)
    return {t.name: shapes[t] for t in m.graph.outputs}


def evaluate(dim: Dim | None, sizes: dict[str, int]) -> int | None:
    """A symbolic dim at the given sizes of its symbols (None when a symbol has no size)."""
    if dim is None or isinstance(dim, int):
        return dim
    total = 0
    for mono, coef in dim.terms:
        if any(name not in sizes for name in mono):
            return None
        total += coef * math.prod(sizes[name] for name in mono)
    return total


def is_fresh(dim: Dim | None) -> bool:
    """Whether a dim is a fresh symbol, the engine's way of saying that it does not know."""
    return isinstance(dim, Poly) and any(n.startswith("?") for m, _ in dim.terms for n in m)


# ---- rules, op by op -----------------------------------------------------------------------------

SHAPE_CHAIN = """g (float[batch, sequence, 8] x) => (int64 target, float y)
    <int64 zero = {0}, int64 one = {1}, int64[1] axes = {0}, int64[2] heads = {2, 4}> {
    s = Shape(x)
    b = Gather<axis = 0>(s, zero)
    n = Gather<axis = 0>(s, one)
    b1 = Unsqueeze(b, axes)
    n1 = Unsqueeze(n, axes)
    target = Concat<axis = 0>(b1, n1, heads)
    y = Reshape(x, target)
}"""


def test_a_shape_chain_carries_symbolic_values_into_reshape() -> None:
    found = infos(outputs_model(SHAPE_CHAIN))
    assert found["target"].shape == (4,)
    assert found["target"].value == (BATCH, SEQUENCE, 2, 4)
    assert found["target"].dtype == np.int64
    assert found["y"].shape == (BATCH, SEQUENCE, 2, 4)
    assert found["y"].dtype == np.float32


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("{0, 0, -1}", (BATCH, SEQUENCE, 32)),
        ("{-1, 8}", (mul(4, mul(BATCH, SEQUENCE)), 8)),
        ("{0, -1, 4, 8}", (BATCH, SEQUENCE, 4, 8)),
    ],
)
def test_reshape_with_zero_and_minus_one(target: str, expected: tuple[Dim, ...]) -> None:
    m = outputs_model(
        f"""g (float[batch, sequence, 4, 8] x) => (float y) <int64[{target.count(",") + 1}] t =
        {target}> {{ y = Reshape(x, t) }}"""
    )
    assert infos(m)["y"].shape == expected


def test_flatten_multiplies_symbolic_dims() -> None:
    m = outputs_model(
        """g (float[batch, sequence, 4] x) => (float y) { y = Flatten<axis = 2>(x) }"""
    )
    assert infos(m)["y"].shape == (mul(BATCH, SEQUENCE), 4)


def test_concat_adds_symbolic_dims() -> None:
    m = outputs_model(
        """g (float[batch, sequence] a, float[batch, 3] b) => (float y) {
            y = Concat<axis = 1>(a, b, a)
        }"""
    )
    assert infos(m)["y"].shape == (BATCH, add(mul(2, SEQUENCE), 3))


def test_gather_puts_the_indices_shape_at_its_axis() -> None:
    m = outputs_model(
        """g (float[30, 4] table, int64[batch, sequence] ids) => (float rows, float columns)
            <int64[2] pick = {0, 3}> {
            rows = Gather<axis = 0>(table, ids)
            columns = Gather<axis = -1>(table, pick)
        }"""
    )
    found = infos(m)
    assert found["rows"].shape == (BATCH, SEQUENCE, 4)
    assert found["columns"].shape == (30, 2)


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps", "expected"),
    [
        ("{1}", "{5}", "{2}", "{1}", (BATCH, SEQUENCE, 4)),
        ("{-3}", "{100}", "{2}", "{1}", (BATCH, SEQUENCE, 3)),
        ("{7}", "{0}", "{2}", "{-2}", (BATCH, SEQUENCE, 4)),
        ("{0}", "{9223372036854775807}", "{1}", "{1}", (BATCH, SEQUENCE, 8)),
    ],
)
def test_slice(starts: str, ends: str, axes: str, steps: str, expected: tuple[Dim, ...]) -> None:
    m = outputs_model(
        f"""g (float[batch, sequence, 8] x) => (float y)
            <int64[1] s = {starts}, int64[1] e = {ends}, int64[1] a = {axes}, int64[1] t = {steps}>
            {{ y = Slice(x, s, e, a, t) }}"""
    )
    assert infos(m)["y"].shape == expected


def test_expand_to_a_symbolic_shape_value() -> None:
    m = outputs_model(
        """g (float[batch, 1, 4] x, float[batch, sequence] mask) => (float y)
            <int64[1] four = {4}> {
            s = Shape(mask)
            target = Concat<axis = 0>(s, four)
            y = Expand(x, target)
        }"""
    )
    assert infos(m)["y"].shape == (BATCH, SEQUENCE, 4)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("[batch, sequence, 8]", "[8, 3]", (BATCH, SEQUENCE, 3)),
        ("[batch, 1, sequence, 8]", "[12, 8, sequence]", (BATCH, 12, SEQUENCE, SEQUENCE)),
        ("[8]", "[8, 3]", (3,)),
        ("[batch, sequence, 8]", "[8]", (BATCH, SEQUENCE)),
    ],
)
def test_matmul_broadcasts_batch_dims(a: str, b: str, expected: tuple[Dim, ...]) -> None:
    m = outputs_model(f"g (float{a} a, float{b} b) => (float y) {{ y = MatMul(a, b) }}")
    assert infos(m)["y"].shape == expected


def test_elementwise_broadcasting_of_symbolic_dims() -> None:
    m = outputs_model(
        """g (float[batch, 1, sequence] a, float[sequence] b, float[batch, 12, 1] c) => (float y) {
            ab = Add(a, b)
            y = Mul(ab, c)
        }"""
    )
    assert infos(m)["y"].shape == (BATCH, 12, SEQUENCE)


def test_small_integer_arithmetic_on_dims() -> None:
    m = outputs_model(
        """g (float[batch, sequence, 384] x) => (int64 heads, int64 twice, int64 same, int64 less)
            <int64 two = {2}, int64 minus = {-1}, int64[1] twelve = {12}> {
            s = Shape<start = -1>(x)
            heads = Div(s, twelve)
            n = Shape<start = 1, end = 2>(x)
            twice = Mul(n, two)
            same = Equal(n, n)
            less = Equal(n, minus)
        }"""
    )
    found = infos(m)
    assert found["heads"].value == (32,)
    assert found["twice"].value == (mul(2, SEQUENCE),)
    assert found["same"].value == (1,) and found["less"].value == (0,)


# ---- dim limits: a constant table read with a symbolic size --------------------------------------

POSITIONS = """g (int64[batch, sequence] ids, float[batch, sequence, 4] h) => (float rows, float y)
    <float[6, 4] table = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
     21, 22, 23}, int64[1] start = {0}, int64[1] axes = {0}> {
    s = Shape<start = 1, end = 2>(ids)
    rows = Slice(table, start, s, axes)
    y = Add(h, rows)
}"""


def test_a_table_sliced_to_a_symbolic_length_is_at_most_its_rows() -> None:
    found = infos(outputs_model(POSITIONS))
    assert found["rows"].shape == (minimum(SEQUENCE, 6), 4)
    # min(sequence, 6) broadcasts with sequence only where they are equal: the result is sequence.
    assert found["y"].shape == (BATCH, SEQUENCE, 4)


def test_broadcast_absorbs_only_a_limit_above_one() -> None:
    assert broadcast((SEQUENCE,), (minimum(SEQUENCE, 512),)) == (SEQUENCE,)
    assert broadcast((minimum(SEQUENCE, 512),), (SEQUENCE,)) == (SEQUENCE,)
    assert broadcast((SEQUENCE,), (minimum(SEQUENCE, 1),)) == (None,)


# ---- what the engine refuses to guess ------------------------------------------------------------


def test_distinct_symbols_do_not_broadcast() -> None:
    assert broadcast((BATCH, 1), (SEQUENCE, 4)) == (None, 4)
    m = outputs_model("g (float[batch] a, float[sequence] b) => (float y) { y = Add(a, b) }")
    (dim,) = infos(m)["y"].shape or ()
    assert is_fresh(dim)


def test_an_inexact_reshape_division_is_a_fresh_symbol() -> None:
    m = outputs_model(
        """g (float[batch, sequence, 3] x) => (float y) <int64[2] t = {-1, 2}> {
            y = Reshape(x, t)
        }"""
    )
    shape = infos(m)["y"].shape
    assert shape is not None and is_fresh(shape[0]) and shape[1] == 2


def test_symbolic_floor_division_has_no_value() -> None:
    m = outputs_model(
        """g (float[batch, sequence] x) => (int64 half) <int64[1] two = {2}> {
            s = Shape<start = 1>(x)
            half = Div(s, two)
        }"""
    )
    found = infos(m)["half"]
    assert found.shape == (1,) and found.value == (None,)


def test_a_slice_of_a_symbolic_dim_by_two_is_unknown() -> None:
    m = outputs_model(
        """g (float[batch, sequence] x) => (float y)
            <int64[1] s = {0}, int64[1] e = {9223372036854775807}, int64[1] a = {1},
             int64[1] t = {2}> { y = Slice(x, s, e, a, t) }"""
    )
    shape = infos(m)["y"].shape
    assert shape is not None and shape[0] == BATCH and is_fresh(shape[1])


def test_values_of_large_integer_tensors_are_not_tracked() -> None:
    m = outputs_model(
        f"""g (float[batch] x) => (int64 small, int64 large)
            <int64 zero = {{0}}, int64 one = {{1}}, int64 n = {{{MAX_VALUE_SIZE}}},
             int64 m = {{{MAX_VALUE_SIZE + 1}}}> {{
            small = Range(zero, n, one)
            large = Range(zero, m, one)
        }}"""
    )
    found = infos(m)
    assert found["small"].value == tuple(range(MAX_VALUE_SIZE))
    assert found["large"].shape == (MAX_VALUE_SIZE + 1,) and found["large"].value is None


def test_ops_without_a_rule_take_onnx_shape_inference() -> None:
    m = outputs_model(
        """g (float[batch, 3, 8, 8] x) => (float y) <float[4, 3, 3, 3] w = {
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}> {
            y = Conv(x, w)
        }"""
    )
    assert infos(m)["y"].shape == (BATCH, 4, 6, 6)


def test_a_custom_domain_op_is_unknown() -> None:
    body = """<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
        g (float[batch, 4] x) => (float y) { y = custom.Mystery(x) }"""
    m = Model.from_onnx(onnx.parser.parse_model(body))
    for tensor in m.graph.outputs:
        tensor.shape = None
    assert infos(m)["y"].shape is None


# ---- properties against ONNX Runtime -------------------------------------------------------------


def _agrees_with_a_run(m: Model, sizes: dict[str, int]) -> None:
    """Every output's known shape and value, evaluated at `sizes`, is what ORT computes."""
    found = infos(m)
    got = run(m, make_feeds(m, sizes, seed=0))
    for name, info in found.items():
        assert info.shape is not None, name
        dims = [evaluate(d, sizes) for d in info.shape]
        actual = got[name]
        assert len(dims) == actual.ndim, name
        for dim, size in zip(dims, actual.shape, strict=True):
            assert dim is None or dim == size, (name, info.shape, actual.shape)
        if info.value is not None:
            values = [evaluate(v, sizes) for v in info.value]
            flat = actual.reshape(-1).tolist()
            assert all(v is None or v == w for v, w in zip(values, flat, strict=True)), name


@PROPERTY
@given(
    batch=st.integers(1, 3),
    sequence=st.integers(1, 7),
    heads=st.sampled_from([1, 2, 4, 8]),
    axis=st.integers(-3, 2),
)
def test_symbolic_chains_agree_with_onnx_runtime(
    batch: int, sequence: int, heads: int, axis: int
) -> None:
    m = outputs_model(
        f"""g (float[batch, sequence, 8] x, float[batch, 1, 8] b, int64[batch, sequence] ids)
            => (int64 target, float split, float merged, float joined, float picked,
                float scores, float wide, float tail)
            <int64 zero = {{0}}, int64 one = {{1}}, int64[1] axes = {{0}},
             int64[2] heads = {{{heads}, {8 // heads}}}, int64[1] flat = {{-1}},
             float[4, 8] table = {{{", ".join(["0.5"] * 32)}}},
             int64[1] s0 = {{1}}, int64[1] e0 = {{-1}}, int64[1] a0 = {{1}}> {{
            s = Shape(x)
            nb = Gather<axis = 0>(s, zero)
            ns = Gather<axis = 0>(s, one)
            nb1 = Unsqueeze(nb, axes)
            ns1 = Unsqueeze(ns, axes)
            target = Concat<axis = 0>(nb1, ns1, heads)
            split = Reshape(x, target)
            merged = Reshape(split, flat)
            joined = Concat<axis = {axis}>(x, x)
            small = Gather<axis = 0>(table, ids)
            picked = Add(small, b)
            xt = Transpose<perm = [0, 2, 1]>(x)
            scores = MatMul(x, xt)
            wide = Expand(b, s)
            tail = Slice(x, s0, e0, a0)
        }}"""
    )
    _agrees_with_a_run(m, {"batch": batch, "sequence": sequence})


@PROPERTY
@given(
    shapes=st.lists(
        st.lists(st.sampled_from([1, 3, "batch", "sequence"]), min_size=0, max_size=3),
        min_size=2,
        max_size=3,
    ),
    batch=st.integers(2, 4),
    sequence=st.integers(5, 6),
)
def test_broadcasting_agrees_with_onnx_runtime(
    shapes: list[list[int | str]], batch: int, sequence: int
) -> None:
    sizes = {"batch": batch, "sequence": sequence}
    concrete = [tuple(sizes.get(d, d) for d in s) for s in shapes]  # type: ignore[misc]
    try:
        np.broadcast_shapes(*concrete)
    except ValueError:
        return  # not a valid graph at these sizes
    inputs = ", ".join(f"float{_dims(s)} x{i}" for i, s in enumerate(shapes))
    terms = [f"x{i}" for i in range(len(shapes))]
    m = outputs_model(f"g ({inputs}) => (float y) {{ y = Sum({', '.join(terms)}) }}")
    _agrees_with_a_run(m, sizes)


def _dims(shape: list[int | str]) -> str:
    """ONNX text of a shape: `[2, batch]`, or nothing for a scalar (`[]` means unknown rank)."""
    return f"[{', '.join(map(str, shape))}]" if shape else ""


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple), min_size=1, max_size=4)
)
def test_broadcast_of_static_shapes_is_numpys(shapes: list[tuple[int, ...]]) -> None:
    try:
        expected = np.broadcast_shapes(*shapes)
    except ValueError:
        assert None in broadcast(*shapes), "incompatible dims are unknown, never a guess"
        return
    assert broadcast(*shapes) == expected
