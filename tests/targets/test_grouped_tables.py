"""Group-wise (4- and 8-bit) embedding tables stay integer codes in the library.

quantize-weights stores a table T [rows, d] as DequantizeLinear(T_q, s, z) grouped along its
rows (block_size, opset 21) or with one scale per row (group 0). The x86 lowering gathers the
rows' codes (two to a byte when 4-bit) and dequantizes only those (`blocked.gather`), so no
float copy of the table is folded into the library. The reference is numpy's (T_q - z) s; the
kernel computes u s - o with the same scales, which differs by float rounding only.
"""

from __future__ import annotations

from typing import Any

import graphs
import numpy as np
import pytest
import tvm
from onnx import numpy_helper
from tvm import relax

from nlpress.ir import Model
from nlpress.passes.quantize_weights import QuantizeWeights
from nlpress.targets import blocked, get_target, lower

AVX2 = get_target("x86", mcpu="haswell")
ROWS, WIDTH = 37, 40  # odd vocabulary; 40 is no multiple of a group of 32


def _table(rows: int = ROWS, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(rows + width).standard_normal((rows, width)).astype(np.float32)


def _quantized(bits: int, group: int, symmetric: bool = False, **shape: Any) -> Model:
    table = graphs.embedding(_table(**shape))
    return QuantizeWeights(bits=bits, group=group, symmetric=symmetric).run(table).model


def _reference(model: Model, ids: np.ndarray) -> np.ndarray:
    """numpy's DequantizeLinear of the stored table, then its rows at `ids`."""
    proto = model.to_onnx()
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    [node] = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    q, scale, *zero = (inits[name] for name in node.input)
    attrs = {a.name: a.i for a in node.attribute}
    q = q.astype(np.float64)
    zero_point = zero[0].astype(np.float64) if zero else np.zeros(scale.shape)
    block = attrs.get("block_size", 0)
    if block:  # grouped along the row (axis 1)
        assert attrs["axis"] == 1
        scale, zero_point = (
            np.repeat(a, block, axis=1)[:, : q.shape[1]] for a in (scale, zero_point)
        )
    else:  # one scale per row
        assert attrs["axis"] == 0
        scale, zero_point = scale[:, None], zero_point[:, None]
    table = ((q - zero_point) * scale.astype(np.float64)).astype(np.float32)
    return table[ids]


def _constants(mod: Any) -> list[np.ndarray]:
    """Every tensor constant of the module's Relax functions."""
    found: list[np.ndarray] = []

    def visit(expr: Any) -> None:
        if isinstance(expr, tvm.ir.GenericConst) and hasattr(expr.value, "numpy"):
            found.append(expr.value.numpy())

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return found


def _lowered(model: Model) -> Any:
    """The module as relax.build receives it from the x86 pipeline (constants folded)."""
    target = lower.tvm_target(AVX2)
    with target:
        return lower.relax_pipeline(AVX2, target)(lower.import_onnx(model.to_onnx()))


def _bound(expected: np.ndarray) -> float:
    return 1e-6 * float(np.abs(expected).max()) + 1e-7


@pytest.mark.parametrize(
    ("bits", "group", "symmetric"),
    [(4, 8, False), (4, 32, False), (4, 32, True), (4, 0, False), (4, 0, True), (8, 8, False)],
    ids=["4b-g8", "4b-g32", "4b-g32-sym", "4b-per-row", "4b-per-row-sym", "8b-g8"],
)
def test_gathered_rows_match_numpy(bits: int, group: int, symmetric: bool) -> None:
    model = _quantized(bits, group, symmetric)
    mod, unscheduled = lower.cpu_kernels(lower.import_onnx(model.to_onnx()), lower.tvm_target(AVX2))
    kernels = [g.name_hint for g, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert unscheduled == [] and blocked.GATHER_KERNEL in kernels
    assert blocked.KERNEL not in kernels  # nothing dequantizes the whole table
    vm = relax.VirtualMachine(lower.build(lower.import_onnx(model.to_onnx()), AVX2), tvm.cpu())
    for ids in (np.array([[0, ROWS - 1, 7, 7, 23]]), np.array([[ROWS - 1], [-1]])):
        ids = ids.astype(np.int64)
        expected = _reference(model, ids)
        got = vm["main"](tvm.runtime.tensor(ids)).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=_bound(expected))


@pytest.mark.parametrize(("bits", "group"), [(4, 8), (4, 32), (4, 0), (8, 8)])
def test_the_library_keeps_the_codes_not_a_float_table(bits: int, group: int) -> None:
    constants = _constants(_lowered(_quantized(bits, group)))
    assert not [c for c in constants if c.dtype == np.float32 and c.size >= ROWS * WIDTH]
    width = WIDTH // 2 if bits == 4 else WIDTH  # two codes to a byte
    assert [c.shape for c in constants if c.dtype == np.uint8] == [(ROWS, width)]


def test_an_odd_width_packs_its_last_code_alone() -> None:
    model = _quantized(4, 8, rows=ROWS, width=WIDTH - 1)  # 39: the last byte holds one code
    constants = _constants(_lowered(model))
    assert [c.shape for c in constants if c.dtype == np.uint8] == [(ROWS, WIDTH // 2)]
    vm = relax.VirtualMachine(lower.build(lower.import_onnx(model.to_onnx()), AVX2), tvm.cpu())
    ids = np.array([[ROWS - 1, 0, 5]], dtype=np.int64)
    expected = _reference(model, ids)
    got = vm["main"](tvm.runtime.tensor(ids)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=_bound(expected))


def test_symbolic_ids_gather_from_the_codes() -> None:
    model = _quantized(4, 32)
    assert model.graph.inputs[0].shape == ["batch", "sequence"]
    vm = relax.VirtualMachine(lower.build(lower.import_onnx(model.to_onnx()), AVX2), tvm.cpu())
    for shape in [(1, 1), (2, 13), (3, 37)]:
        ids = np.random.default_rng(shape[1]).integers(0, ROWS, shape).astype(np.int64)
        ids.flat[-1] = ROWS - 1
        expected = _reference(model, ids)
        got = vm["main"](tvm.runtime.tensor(ids)).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=_bound(expected))


def test_the_4_bit_library_is_smaller_than_the_float_one(tmp_path: Any) -> None:
    """A 2000 x 64 table: 500 KiB in float, 62.5 KiB of codes plus two floats a group of 32."""
    table = graphs.embedding(_table(2000, 64), ids=(1, 8))
    sizes = {}
    for name, model in [("float", table), ("4-bit", QuantizeWeights().run(table).model)]:
        executable = lower.build(lower.import_onnx(model.to_onnx()), AVX2)
        lower.export(executable, AVX2, tmp_path / f"{name}.so", tmp_path / name)
        sizes[name] = (tmp_path / f"{name}.so").stat().st_size
    table_bytes = 2000 * 64 * 4
    assert sizes["float"] - sizes["4-bit"] > table_bytes * 3 // 4


def test_pack_nibbles_puts_two_codes_in_a_byte_low_first() -> None:
    codes = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5) % 16
    packed = blocked.pack_nibbles(codes)
    assert packed.shape == (3, 3) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packed & 15, codes[:, 0::2])
    np.testing.assert_array_equal(packed[:, :2] >> 4, codes[:, 1::2])
    assert not (packed[:, 2] >> 4).any()  # the odd column's partner is zero


@pytest.mark.parametrize(("axis", "scale_shape"), [(0, [6]), (1, [10]), (1, [])])
def test_per_axis_tables_are_whole_groups(axis: int, scale_shape: list[int]) -> None:
    rng = np.random.default_rng(axis)
    q = rng.integers(-8, 8, (6, 10)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, scale_shape).astype(np.float32)
    zero = rng.integers(-2, 2, scale_shape).astype(np.int8)
    groups = blocked.per_axis(q, scale, zero, axis)
    assert groups is not None and groups.bits == 4
    # One group spans the other axis: [6, 1] per row, [1, 10] per column or per tensor.
    assert groups.scale.shape == ((6, 1) if axis == 0 and scale_shape else (1, 10))
    assert groups.group == q.shape[groups.axis]
    per_row = axis == 0 and bool(scale_shape)
    s, z = (a[:, None] if per_row else a for a in (scale, zero.astype(np.float32)))
    got = groups.codes * groups.scale - groups.offset
    np.testing.assert_allclose(got, (q - z) * s, rtol=0, atol=1e-6)
