"""Integer matmuls on ARM and CUDA: NEON smull (plain), sdot (+dotprod), usdot (+i8mm); __dp4a.

The fast tests cross-compile and read the assembly; the shifted kernel's arithmetic is checked
exact on the host. The slow tests run the artifacts under qemu and compare them with numpy's
int32 result and with the x86 artifact.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import graphs
import numpy as np
import pytest
import test_quantized as tq
import tvm
from tvm import relax

from nlpress.targets import emulation, get_target, lower, quantized
from nlpress.targets.schedules import int8_intrinsics

DOTPROD = lower.tvm_target(get_target("arm", mattr=["dotprod"]))
I8MM = lower.tvm_target(get_target("arm", mattr=["i8mm"]))
NEON = lower.tvm_target(get_target("arm"))


def _asm(target: Any, m: int = 16, k: int = 64, n: int = 48) -> str:
    return tq._assembly(tq._scheduled_kernel(graphs.qdq_matmul(m, k, n), target), target)


def test_dotprod_target_uses_sdot_on_shifted_activations() -> None:
    asm = _asm(DOTPROD)
    assert "sdot\tv" in asm and "usdot" not in asm
    assert "eor\tv" in asm  # the activation bytes flipped into int8


def test_i8mm_target_uses_usdot() -> None:
    assert "usdot\tv" in _asm(I8MM)


def test_plain_neon_multiplies_with_smull_and_adds_pairs_with_sadalp() -> None:
    asm = _asm(NEON)
    assert "smull\tv" in asm and "sadalp\tv" in asm
    assert "sdot" not in asm and "eor\tv" in asm


def test_signed_instructions_shift_the_activations() -> None:
    offsets = {t: int8_intrinsics.int8_kernel(t).activation_offset for t in (DOTPROD, NEON)}
    assert offsets == {DOTPROD: 128, NEON: 128}
    assert int8_intrinsics.int8_kernel(I8MM).activation_offset == 0
    assert int8_intrinsics.int8_kernel(tq.ZNVER4).activation_offset == 0


def test_dotprod_kernel_subtracts_128_from_activation_and_zero_point() -> None:
    kernel = tq._scheduled_kernel(graphs.qdq_matmul(16, 64, 48), DOTPROD)
    text = kernel.script()
    assert "llvm.aarch64.neon.sdot" in text
    assert '(T.Cast("int32", param_2[()]) - 128)' in text  # the zero point, in the epilogue


@pytest.mark.parametrize("offset", [0, 128])
def test_sdot_fits_only_kernels_with_shifted_activations(offset: int) -> None:
    """A kernel built without the shift (x86's) must not be tensorized with sdot."""
    proto = graphs.qdq_matmul(16, 64, 48)
    mod = quantized.rewrite_qdq_matmuls(lower.import_onnx(proto), activation_offset=offset)
    with DOTPROD:
        legal = lower.cpu_kernels(mod, DOTPROD, default_schedules=False)[0]
    (kernel,) = [f for n, f in tq._kernels(legal).items() if "qmatmul" in n]
    sch = tvm.s_tir.Schedule(kernel)
    block = sch.get(sch.get_sblock(quantized.ACC_BLOCK))
    assert int8_intrinsics.block_activation_offset(block) == offset
    sdot = int8_intrinsics.int8_kernel(DOTPROD)
    assert int8_intrinsics.fits(block, sdot) == (offset == 128)
    assert int8_intrinsics.fits(block, int8_intrinsics.GENERIC) == (offset == 0)


@pytest.mark.parametrize("zero_point", [0, 131, 255])
def test_shifted_kernel_is_exact_on_the_host(zero_point: int) -> None:
    """The sdot formulation's arithmetic, sum((x - 128) w) - (zp - 128) colsum, run on x86."""
    proto, x, expected = graphs.exact_qdq_case(9, 36, 40, zero_point=zero_point, seed=7)
    mod = quantized.rewrite_qdq_matmuls(lower.import_onnx(proto), activation_offset=128)
    assert "- 128" in tq._kernels(mod)["qmatmul"].script()
    vm = relax.VirtualMachine(lower.build(mod, get_target("x86")), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), expected)


# ------------------------------------------------------------------------------------------
# Under emulation


def _run_arm(proto: Any, mattr: list[str], x: np.ndarray, folder: Path) -> np.ndarray:
    target = get_target("arm", mattr=mattr)
    folder.mkdir()
    lower.export(lower.build(lower.import_onnx(proto), target), target, folder / "model.so", folder)
    np.save(folder / "x.npy", x)
    emulation.run_python(
        tq.RUN_SCRIPT,
        args=[str(folder / "model.so"), str(folder / "x.npy"), str(folder / "out.npy")],
        env={"TVM_USE_RUNTIME_LIB": "1"},
    )
    return np.asarray(np.load(folder / "out.npy"))


@pytest.mark.slow
@pytest.mark.skipif(tq.EMULATION_SKIP is not None, reason=str(tq.EMULATION_SKIP))
@pytest.mark.parametrize("mattr", [[], ["dotprod"], ["i8mm"]], ids=["smull", "sdot", "usdot"])
def test_arm_dot_product_artifact_is_exact_under_emulation(
    mattr: list[str], tmp_path: Path
) -> None:
    proto, x, expected = graphs.exact_qdq_case(13, 68, 56, zero_point=250, seed=8)
    got = _run_arm(proto, mattr, x, tmp_path / "arm")
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, tq._run(proto, x))  # the x86 artifact


@pytest.mark.slow
@pytest.mark.skipif(tq.EMULATION_SKIP is not None, reason=str(tq.EMULATION_SKIP))
def test_arm_sdot_matches_x86_with_scales_and_bias(tmp_path: Path) -> None:
    proto = graphs.qdq_matmul(10, 40, 48, zero_point=120)
    x = np.random.default_rng(9).standard_normal((1, 10, 40)).astype(np.float32)
    host = tq._run(proto, x)
    got = _run_arm(proto, ["dotprod"], x, tmp_path / "arm")
    np.testing.assert_allclose(got, host, rtol=0, atol=tq._bound(host))


# ------------------------------------------------------------------------------------------
# CUDA: __dp4a

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")


def _cuda_source(proto: Any, arch: str = "sm_80") -> str:
    executable = lower.build(lower.import_onnx(proto), get_target("cuda", arch=arch))
    modules = [executable.mod]
    while modules:
        module = modules.pop()
        if module.kind == "cuda":
            return str(module.inspect_source("cuda"))
        modules.extend(module.imports)
    raise AssertionError("no CUDA module")


@pytest.mark.parametrize(("m", "k", "n", "lead"), [(16, 64, 48, "batch"), (7, 18, 40, 1)])
def test_cuda_integer_matmul_uses_dp4a(m: int, k: int, n: int, lead: int | str) -> None:
    source = _cuda_source(graphs.qdq_matmul(m, k, n, lead=lead))
    kernel = source[source.index("fused_qmatmul") :]
    assert "__dp4a(" in kernel
    assert "^ -2139062144" in kernel  # the activation bytes shifted into int8 (0x80808080)


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_dp4a_artifact_compiles_with_nvcc(arch: str, tmp_path: Path) -> None:
    from nlpress.ir import Model
    from nlpress.targets import build_artifact
    from nlpress.targets.cuda import device_code

    model = Model.from_onnx(graphs.qdq_matmul(16, 64, 48, lead="batch"))
    out = build_artifact(model, get_target("cuda", arch=arch), tmp_path / "a", manifest={})
    cubins = [image for image in device_code(out / "model.so") if image.kind == "elf"]
    assert [image.arch for image in cubins] == [arch]
    assert any(k.startswith("fused_qmatmul") for k in cubins[0].kernels), cubins[0].kernels


def _has_gpu() -> bool:
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="no CUDA GPU present")
def test_cuda_dp4a_artifact_is_exact_on_the_gpu(tmp_path: Path) -> None:
    from nlpress.ir import Model
    from nlpress.targets import build_artifact, load

    major, minor = tvm.cuda(0).compute_version.split(".")
    arch = f"sm_{major}{minor}" if f"sm_{major}{minor}" in ("sm_80", "sm_90") else "sm_80"
    proto, x, expected = graphs.exact_qdq_case(13, 68, 56, zero_point=250, seed=10)
    model = Model.from_onnx(proto)
    out = build_artifact(model, get_target("cuda", arch=arch), tmp_path / "a", manifest={})
    (got,) = load(out).run(None, {"x": x})
    np.testing.assert_array_equal(got, expected)
