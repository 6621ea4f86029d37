"""QDQ MatMuls lower to integer matmuls: the rewrite fires, the integer path is exact, VNNI is used.

The QDQ graphs follow quantize-insert's format: an int8 weight [k, n] behind
DequantizeLinear(axis=1) with a per-channel (or per-tensor) float scale and zero zero-point, and
a uint8 activation behind QuantizeLinear -> DequantizeLinear (static) or DynamicQuantizeLinear ->
DequantizeLinear (dynamic). Bounds against ONNX Runtime: both sides compute the same integer
sums, so only the float epilogue's rounding differs: |diff| <= 1e-5 * max|output| + 1e-5.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import graphs
import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from nlpress.ir import Model
from nlpress.ir.verify import run
from nlpress.targets import emulation, get_target, lower, quantized, schedules
from nlpress.targets.schedules import int8

ZNVER4 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"})
AVX2 = get_target("x86", mcpu="haswell")
ARM_DOTPROD = get_target("arm", mattr=["dotprod"])


def _bound(reference: np.ndarray) -> float:
    return 1e-5 * float(np.abs(reference).max()) + 1e-5


def _run(proto: onnx.ModelProto, x: np.ndarray, target: Any = None) -> np.ndarray:
    executable = lower.build(lower.import_onnx(proto), target or get_target("x86"))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return np.asarray(vm["main"](tvm.runtime.tensor(x)).numpy())


def _ort(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return np.asarray(run(Model.from_onnx(proto), {"x": x})["out"])


def _main_text(mod: Any) -> str:
    return str(mod["main"].script(show_meta=False))


def _kernels(mod: Any) -> dict[str, Any]:
    return {g.name_hint: f for g, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


# ------------------------------------------------------------------------------------------
# The rewrite


def test_rewrite_replaces_the_float_matmul_by_an_integer_kernel() -> None:
    mod = quantized.rewrite_qdq_matmuls(lower.import_onnx(graphs.qdq_matmul(7, 20, 24)))
    text = _main_text(mod)
    assert "R.dequantize" not in text  # neither the weight's nor the activation's
    assert "R.matmul" not in text
    assert "R.quantize(x" in text  # float -> uint8 stays: it is real work
    assert "R.add" not in text  # the bias went into the kernel
    (kernel,) = _kernels(mod).values()
    sch = tvm.s_tir.Schedule(kernel)
    stmt = sch.get(sch.get_sblock(quantized.ACC_BLOCK))
    assert str(stmt.writes[0].source.dtype) == "int32"
    assert sorted(str(r.source.dtype) for r in stmt.reads) == ["int8", "uint8"]
    weight = next(r.source for r in stmt.reads if str(r.source.dtype) == "int8")
    assert [int(d) for d in weight.shape] == [2, 5, 16, 4]  # 24 -> 32 columns, 20 rows


def test_portable_form_is_an_int32_matmul_over_uint8_and_int8() -> None:
    mod = quantized.rewrite_qdq_matmuls(
        lower.import_onnx(graphs.qdq_matmul(7, 20, 24)), packed=False
    )
    text = _main_text(mod)
    assert 'R.matmul(lv, metadata["ir.GenericConst"]' in text or "R.matmul(" in text
    assert 'out_dtype="int32"' in text
    assert "R.dequantize" not in text
    matmul = next(
        b.value
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.matmul"
    )
    assert [str(a.ty.dtype.dtype) for a in matmul.args] == ["uint8", "int8"]


def test_rewrite_leaves_what_it_does_not_lower() -> None:
    proto = graphs.qdq_matmul(7, 20, 24)
    for init in proto.graph.initializer:
        if init.name == "wzp":  # a nonzero weight zero-point stays in float
            init.CopyFrom(graphs.initializer("wzp", np.ones(24, np.int8)))
    mod = lower.import_onnx(proto)
    assert quantized.rewrite_qdq_matmuls(mod) is mod


def test_matmul_that_is_the_graph_output_is_rewritten() -> None:
    proto = graphs.qdq_matmul(7, 20, 24, bias=False)
    proto.graph.node.pop()  # the Relu
    proto.graph.output[0].name = "y"
    x = np.random.default_rng(5).standard_normal((1, 7, 20)).astype(np.float32)
    expected = np.asarray(run(Model.from_onnx(proto), {"x": x})["y"])
    got = _run(proto, x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=_bound(expected))


def test_dynamic_range_is_two_row_reductions() -> None:
    mod = quantized.rewrite_qdq_matmuls(
        lower.import_onnx(graphs.qdq_matmul(7, 20, 24, dynamic=True))
    )
    text = _main_text(mod)
    assert "axis=None" not in text  # no reduction of a whole tensor at once
    assert text.count("R.max(") == 2 and text.count("R.min(") == 2


@pytest.mark.parametrize(("axis", "scale_shape"), [(0, [50]), (1, [16]), (1, [])])
def test_gather_of_a_quantized_table_keeps_it_int8(axis: int, scale_shape: list[int]) -> None:
    rng = np.random.default_rng(6)
    table = rng.integers(-127, 128, (50, 16)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, scale_shape).astype(np.float32)
    zero_point = rng.integers(-3, 3, scale_shape).astype(np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["tq", "s", "zp"], ["t"], axis=axis),
        helper.make_node("Gather", ["t", "ids"], ["out"], axis=0),
    ]
    inits = [graphs.initializer(n, v) for n, v in (("tq", table), ("s", scale), ("zp", zero_point))]
    ids_info = graphs.tensor("ids", [2, 5], TensorProto.INT64)
    proto = graphs.build(nodes, [ids_info], [graphs.tensor("out", [2, 5, 16])], inits, opset=21)
    mod = quantized.rewrite_qdq_matmuls(lower.import_onnx(proto))
    assert "R.dequantize" not in _main_text(mod)
    ids = rng.integers(0, 50, (2, 5)).astype(np.int64)
    vm = relax.VirtualMachine(lower.build(lower.import_onnx(proto), get_target("x86")), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(ids)).numpy()
    np.testing.assert_array_equal(got, run(Model.from_onnx(proto), {"ids": ids})["out"])


def test_pack_weight_puts_16x4_blocks_together() -> None:
    w = np.arange(7 * 18, dtype=np.int64).reshape(7, 18).astype(np.int8)
    packed = quantized.pack_weight(w)
    assert packed.shape == (2, 2, 16, 4)
    i, j = np.meshgrid(np.arange(7), np.arange(18), indexing="ij")
    np.testing.assert_array_equal(packed[j // 16, i // 4, j % 16, i % 4], w)
    assert not packed[1, :, 2:, :].any() and not packed[:, 1, :, 3].any()  # zero padding


# ------------------------------------------------------------------------------------------
# Exactness and agreement with ONNX Runtime


@pytest.mark.parametrize(
    ("m", "k", "n", "lead"), [(7, 20, 24, 1), (5, 19, 33, 2), (16, 64, 48, "batch"), (1, 8, 16, 1)]
)
@pytest.mark.parametrize("target", ["host", "avx2"])
def test_integer_path_is_exact(m: int, k: int, n: int, lead: int | str, target: str) -> None:
    """With unit scales, no bias and x integral, the output is the int32 sum itself."""
    proto, x, expected = graphs.exact_qdq_case(m, k, n, lead, zero_point=131, seed=1)
    got = _run(proto, x, get_target("x86") if target == "host" else AVX2)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("per_tensor", [False, True], ids=["per-channel", "per-tensor"])
def test_matches_onnxruntime(dynamic: bool, per_tensor: bool) -> None:
    proto = graphs.qdq_matmul(12, 40, 56, lead="batch", dynamic=dynamic, per_tensor=per_tensor)
    x = np.random.default_rng(2).standard_normal((2, 12, 40)).astype(np.float32)
    expected = _ort(proto, x)
    np.testing.assert_allclose(_run(proto, x), expected, rtol=0, atol=_bound(expected))


def test_quantized_minilm_style_block_matches_onnxruntime() -> None:
    """A float graph quantized by `quantize_matmuls`: two weight MatMuls with GELU-free FFN."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["o"]),
        helper.make_node("Add", ["x", "o"], ["out"]),
    ]
    inits = [
        graphs.initializer("w1", rng.standard_normal((32, 64)).astype(np.float32) * 0.1),
        graphs.initializer("b1", rng.standard_normal(64).astype(np.float32)),
        graphs.initializer("w2", rng.standard_normal((64, 32)).astype(np.float32) * 0.1),
    ]
    io = [graphs.tensor("x", [1, 16, 32])], [graphs.tensor("out", [1, 16, 32])]
    proto = graphs.quantize_matmuls(graphs.build(nodes, *io, inits, opset=21))
    x = rng.standard_normal((1, 16, 32)).astype(np.float32)
    expected = _ort(proto, x)
    np.testing.assert_allclose(_run(proto, x), expected, rtol=0, atol=_bound(expected))


# ------------------------------------------------------------------------------------------
# Schedules


def _scheduled_kernel(proto: onnx.ModelProto, target: Any) -> Any:
    mod, unscheduled = lower.cpu_kernels(lower.import_onnx(proto), target)
    assert unscheduled == []
    (name,) = [n for n in _kernels(mod) if "qmatmul" in n]
    return _kernels(mod)[name]


def _assembly(func: Any, target: Any) -> str:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    return str(lib.mod.inspect_source("asm"))


def test_scheduled_kernel_is_not_scheduled_again() -> None:
    kernel = _scheduled_kernel(graphs.qdq_matmul(16, 64, 48), ZNVER4)
    assert schedules.Int8Matmul().apply(kernel, ZNVER4, False) is None


def test_rule_takes_the_kernel_and_tensorizes_it(caplog: pytest.LogCaptureFixture) -> None:
    mod = lower.import_onnx(graphs.qdq_matmul(128, 384, 96))
    mod = quantized.rewrite_qdq_matmuls(mod)
    with ZNVER4:
        legal = lower.cpu_kernels(mod, ZNVER4, default_schedules=False)[0]
    (kernel,) = [f for n, f in _kernels(legal).items() if "qmatmul" in n]
    sch = int8.Int8Matmul().apply(kernel, ZNVER4, False)
    assert sch is not None
    assert "vpdpbusd" in sch.mod.script()


def test_arm_with_dotprod_builds() -> None:
    executable = lower.build(lower.import_onnx(graphs.qdq_matmul(16, 64, 48)), ARM_DOTPROD)
    assert executable is not None


# ------------------------------------------------------------------------------------------
# Other targets

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")


@needs_nvcc
def test_cuda_artifact_holds_the_integer_kernel(tmp_path: Path) -> None:
    from nlpress.targets import build_artifact
    from nlpress.targets.cuda import device_code

    model = Model.from_onnx(graphs.qdq_matmul(16, 64, 48))
    out = build_artifact(model, get_target("cuda", arch="sm_80"), tmp_path / "a", manifest={})
    kernels = {k for image in device_code(out / "model.so") for k in image.kernels}
    assert any(k.startswith("fused_qmatmul") for k in kernels), kernels


EMULATION_SKIP = emulation.available()
if EMULATION_SKIP is None and shutil.which("aarch64-linux-gnu-gcc") is None:
    EMULATION_SKIP = "aarch64-linux-gnu-gcc not found: run .ci/setup-arm.sh"

RUN_SCRIPT = """
import sys
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

lib_path, x_path, out_path = sys.argv[1:]
vm = VirtualMachine(tvm.runtime.load_module(lib_path), tvm.cpu())
np.save(out_path, vm["main"](tvm.runtime.tensor(np.load(x_path))).numpy())
"""


@pytest.mark.slow
@pytest.mark.skipif(EMULATION_SKIP is not None, reason=str(EMULATION_SKIP))
def test_arm_dotprod_artifact_is_exact_under_emulation(tmp_path: Path) -> None:
    zero_point = 131
    proto = graphs.qdq_matmul(9, 36, 40, bias=False, scales=(1.0, 1.0), zero_point=zero_point)
    wq = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "wq"))
    x = np.random.default_rng(4).integers(-zero_point, 256 - zero_point, (1, 9, 36))
    executable = lower.build(lower.import_onnx(proto), ARM_DOTPROD)
    lower.export(executable, ARM_DOTPROD, tmp_path / "model.so", tmp_path / "work")
    np.save(tmp_path / "x.npy", x.astype(np.float32))
    emulation.run_python(
        RUN_SCRIPT,
        args=[str(tmp_path / "model.so"), str(tmp_path / "x.npy"), str(tmp_path / "out.npy")],
        env={"TVM_USE_RUNTIME_LIB": "1"},
    )
    expected = np.maximum(x.astype(np.int32) @ wq.astype(np.int32), 0).astype(np.float32)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
