"""Float matmuls over weight panels: the rewrite, the rule, exactness against ONNX Runtime.

Bound against ONNX Runtime: both sum the same products of float32 in another order, so
|diff| <= 1e-5 * max|output| + 1e-5.
"""

from __future__ import annotations

import math
from typing import Any

import graphs
import numpy as np
import onnx
import pytest
import tvm
import tvm_ffi
from tvm import relax

from nlpress.ir import Model
from nlpress.ir.verify import run
from nlpress.passes.quantize_weights import QuantizeWeights
from nlpress.targets import get_target, lower, panels, schedules
from nlpress.targets.schedules import Matmul, PanelMatmul
from nlpress.targets.schedules.panels import panel_tile, tall_rows

AVX2 = get_target("x86", mcpu="haswell")
AVX512 = get_target("x86", mcpu="skylake-avx512")


def _model(shape: list[int | str], k: int, n: int, seed: int = 0) -> Any:
    """x @ W + b -> Gelu, the FFN's first half."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return graphs.dense(shape, w, b, "Gelu", opset=21).to_onnx()


def _kernels(mod: Any) -> dict[str, Any]:
    return {g.name_hint: f for g, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def _unscheduled_kernel(proto: onnx.ModelProto, target: Any, monkeypatch: Any) -> Any:
    """The panel kernel of `proto` as the schedule rules receive it."""
    before: dict[str, Any] = {}
    scheduled = schedules.schedule_module

    def schedule_module(mod: Any, *args: Any) -> Any:
        before.update(_kernels(mod))
        return scheduled(mod, *args)

    monkeypatch.setattr(schedules, "schedule_module", schedule_module)
    lower.cpu_kernels(lower.import_onnx(proto), target)
    [kernel] = [f for name, f in before.items() if panels.KERNEL_NAME in name]
    return kernel


def test_pack_panels_puts_columns_of_a_panel_together() -> None:
    w = np.arange(5 * 19, dtype=np.float32).reshape(5, 19)
    packed = panels.pack_panels(w, 8)
    assert packed.shape == (3, 5, 8, 1)
    i, j = np.meshgrid(np.arange(5), np.arange(19), indexing="ij")
    np.testing.assert_array_equal(packed[j // 8, i, j % 8, 0], w)
    assert not packed[2, :, 3:].any()  # zero padding


def test_static_matmul_becomes_one_panel_kernel_with_its_epilogue() -> None:
    target = lower.tvm_target(AVX2)
    mod, unscheduled = lower.cpu_kernels(lower.import_onnx(_model([1, 24, 40], 40, 56)), target)
    assert unscheduled == []
    names = [n for n in _kernels(mod) if panels.KERNEL_NAME in n]
    assert len(names) == 1 and "add" in names[0]  # bias (and GELU) fused into the kernel


@pytest.mark.parametrize(
    ("shape", "by_panel_rule"), [([1, 24, 40], False), (["batch", "sequence", 40], True)]
)
def test_symbolic_rows_take_the_panel_rule_and_static_rows_the_matmul_rule(
    shape: list[Any], by_panel_rule: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = lower.tvm_target(AVX2)
    kernel = _unscheduled_kernel(_model(shape, 40, 56), target, monkeypatch)
    assert (PanelMatmul().apply(kernel, target, False) is not None) == by_panel_rule
    assert by_panel_rule or Matmul().apply(kernel, target, False) is not None


def test_a_single_static_row_takes_the_panel_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Matmul rule does not take one row; RowReduction did, over strided panel reads."""
    target = lower.tvm_target(AVX512)
    kernel = _unscheduled_kernel(_model([1, 1, 40], 40, 56), target, monkeypatch)
    assert Matmul().apply(kernel, target, False) is None
    assert PanelMatmul().apply(kernel, target, False) is not None


@pytest.mark.parametrize(
    ("shape", "buffered"),
    [([1, 13, 40], True), (["batch", "sequence", 40], True), ([1, 3, 40], False)],
)
@pytest.mark.parametrize("target", [AVX2, AVX512], ids=["avx2", "avx512"])
def test_grouped_codes_are_unpacked_once_per_panel_outside_the_float_tile(
    shape: list[Any], buffered: bool, target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The panel rule's tile reads floats unpacked per panel, or the codes when it is alone."""
    quantized = QuantizeWeights(bits=4, group=32).run(Model.from_onnx(_model(shape, 40, 56)))
    tvm_target = lower.tvm_target(target)
    kernel = _unscheduled_kernel(quantized.model.to_onnx(), tvm_target, monkeypatch)
    sch = PanelMatmul().apply(kernel, tvm_target, False)
    assert sch is not None
    update = sch.get(sch.get_sblock(f"{panels.ACC_BLOCK}_update"))
    assert ("uint8" in {str(r.source.dtype) for r in update.reads}) != buffered
    if buffered:
        dequantize = sch.get_sblock(panels.DEQUANTIZE_BLOCK)
        assert sch.get(sch.get_loops(dequantize)[-1]).kind == tvm.tirx.ForKind.VECTORIZED
        assert sch.get(dequantize).writes[0].source.scope() == "local"


@pytest.mark.parametrize(
    ("shape", "k", "n"), [([1, 3, 40], 40, 56), ([2, 1, 37], 37, 33), ([1, 9, 70], 70, 17)]
)
@pytest.mark.parametrize("target", [AVX2, get_target("x86")], ids=["avx2", "host"])
def test_grouped_panel_kernel_is_exact_over_few_rows(
    shape: list[int], k: int, n: int, target: Any
) -> None:
    """Codes unpacked in the tile (rows of one tile) or into a panel buffer (more rows)."""
    model = Model.from_onnx(_model(shape, k, n, seed=k + n))
    quantized = QuantizeWeights(bits=4, group=32).run(model).model
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = run(quantized, {"x": x})["y"]
    executable = lower.build(lower.import_onnx(quantized.to_onnx()), target)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    bound = 1e-5 * float(np.abs(expected).max()) + 1e-5
    np.testing.assert_allclose(got, expected, rtol=0, atol=bound)


@pytest.mark.parametrize("target", [AVX2, get_target("x86")], ids=["avx2", "host"])
def test_symbolic_rows_are_exact_in_whole_tiles(target: Any) -> None:
    proto = _model(["batch", "sequence", 40], 40, 56)
    mod, unscheduled = lower.cpu_kernels(lower.import_onnx(proto), lower.tvm_target(target))
    assert unscheduled == [] and [n for n in _kernels(mod) if panels.KERNEL_NAME in n]
    vm = relax.VirtualMachine(lower.build(lower.import_onnx(proto), target), tvm.cpu())
    # Partial tiles, less than one, and on AVX-512 whole tall tiles with 0, 1 and 2 short ones.
    for batch, rows in [(1, 1), (2, 13), (3, 6), (1, 37), (1, 12), (2, 24), (1, 20), (1, 23)]:
        x = np.random.default_rng(rows).standard_normal((batch, rows, 40)).astype(np.float32)
        expected = run(Model.from_onnx(proto), {"x": x})["y"]
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        bound = 1e-5 * float(np.abs(expected).max()) + 1e-5
        np.testing.assert_allclose(got, expected, rtol=0, atol=bound)


def test_each_instruction_set_has_its_panel_tile() -> None:
    assert panel_tile(lower.tvm_target(AVX512)) == (4, 32)
    assert tall_rows(lower.tvm_target(AVX512)) == 12
    assert tall_rows(lower.tvm_target(AVX2)) == 0
    assert panel_tile(lower.tvm_target(AVX2)) == (6, 16)
    assert panel_tile(lower.tvm_target(get_target("arm"))) is None  # the plain layout


def test_symbolic_rows_run_unguarded_tall_tiles_then_short_ones() -> None:
    """On AVX-512: 12-row tiles, then 4-row ones, in one panel loop; no guard in either sum."""
    from tvm.s_tir import SBlockRealize

    proto = _model(["sequence", 40], 40, 64)
    mod, _ = lower.cpu_kernels(lower.import_onnx(proto), lower.tvm_target(AVX512))
    [kernel] = [f for name, f in _kernels(mod).items() if panels.KERNEL_NAME in name]
    sums: list[Any] = []
    unrolled: list[int] = []

    def realize(node: Any) -> None:
        if node.block.name_hint == f"{panels.ACC_BLOCK}_update":
            sums.append(node)

    def loop(node: Any) -> None:
        if node.kind == tvm.tirx.ForKind.UNROLLED and node.extent in (4, 12):
            unrolled.append(int(node.extent))

    tvm_ffi.structural_walk(
        kernel.body, ((SBlockRealize, realize), (tvm.tirx.For, loop)), order="pre"
    )
    assert len(sums) == 2
    assert all(isinstance(s.predicate, tvm.tirx.IntImm) and int(s.predicate) for s in sums)
    assert unrolled.index(12) < unrolled.index(4)  # the tall tiles come first
    panels_loop = kernel.body.block.body  # one parallel loop over the panels holds both
    assert isinstance(panels_loop, tvm.tirx.For) and panels_loop.kind == tvm.tirx.ForKind.PARALLEL


@pytest.mark.parametrize(
    ("shape", "k", "n"),
    [
        ([1, 128, 64], 64, 96),
        ([1, 13, 40], 40, 56),
        ([3, 7, 19], 19, 33),
        ([5, 33], 33, 17),
        ([2, 1, 19], 19, 33),
    ],
)
def test_panel_kernel_matches_onnxruntime(shape: list[int], k: int, n: int) -> None:
    proto = _model(shape, k, n, seed=k + n)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = run(Model.from_onnx(proto), {"x": x})["y"]
    executable = lower.build(lower.import_onnx(proto), AVX2)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    bound = 1e-5 * float(np.abs(expected).max()) + 1e-5
    np.testing.assert_allclose(got, expected, rtol=0, atol=bound)


@pytest.mark.parametrize(
    ("shape", "n", "per_tensor"),
    [(["batch", "sequence", 40], 56, False), ([1, 13, 40], 100, False), ([3, 40], 17, True)],
)
@pytest.mark.parametrize("target", [AVX2, get_target("x86")], ids=["avx2", "host"])
def test_weight_only_int8_keeps_int8_panels_and_its_exact_sum(
    target: Any, shape: list[Any], n: int, per_tensor: bool
) -> None:
    """matmul(x, dequantize(W_q, s)) runs over int8 panels and computes x @ (W_q * s)."""
    proto = graphs.weight_only_int8(_model(shape, 40, n, seed=n), per_tensor=per_tensor)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    weight = inits["w_q"].astype(np.float32) * inits["w_s"]
    tvm_target = lower.tvm_target(target)
    mod, unscheduled = lower.cpu_kernels(lower.import_onnx(proto), tvm_target)
    [kernel] = [f for name, f in _kernels(mod).items() if panels.KERNEL_NAME in name]
    assert unscheduled == [] and {str(p.dtype) for p in kernel.params} >= {"int8"}
    vm = relax.VirtualMachine(lower.build(lower.import_onnx(proto), target), tvm.cpu())
    for rows in [1, 6, 37]:
        dims = [rows if isinstance(d, str) else d for d in shape]
        x = np.random.default_rng(rows).standard_normal(dims).astype(np.float32)
        z = x @ weight + inits["b"]
        expected = 0.5 * z * (1 + np.vectorize(math.erf)(z / np.sqrt(2)))
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        bound = 1e-5 * float(np.abs(expected).max()) + 1e-5
        np.testing.assert_allclose(got, expected, rtol=0, atol=bound)


def test_integer_tiles_over_a_symbolic_row_count_take_at_most_four_rows() -> None:
    """A sentence's rows are padded to whole tiles: 4-row tiles compute at most 3 in vain."""
    from tvm import tirx

    from nlpress.targets.panels import int8_tile_rows

    assert int8_tile_rows(tirx.IntImm("int64", 128), 8) == 8  # static: the table's tile
    assert int8_tile_rows(tirx.Var("sequence", "int64"), 8) == 4
    assert int8_tile_rows(tirx.Var("sequence", "int64"), 2) == 2


@pytest.mark.parametrize("weights", ["float", "4-bit"])
def test_aarch64_packs_group_wise_weights_only(weights: str) -> None:
    """Float matmuls keep their layout on arm; group-wise ones stay codes in panels (a float
    constant dequantized from them would hold 8x their bytes)."""
    model = Model.from_onnx(_model(["batch", "sequence", 64], 64, 48))
    if weights == "4-bit":
        model = QuantizeWeights(bits=4, group=32).run(model).model
    arm = lower.tvm_target(get_target("arm"))
    mod, unscheduled = lower.cpu_kernels(lower.import_onnx(model.to_onnx()), arm)
    packed = [name for name in _kernels(mod) if panels.KERNEL_NAME in name]
    assert unscheduled == []
    assert bool(packed) == (weights == "4-bit")
