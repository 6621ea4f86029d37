"""Integer matmul kernel families on x86: chosen from the target, exact, the intended instruction.

Each family is checked three ways: the target picks it; its assembly holds its instruction; and
it is exact against numpy's int32 sums on odd shapes, run here when this CPU has the family's
instruction set (qemu-user 7.2 emulates none of AVX-512 or AVX-VNNI, so those are checked by
their assembly and by running their weight layout through the generic kernel on this host).
The ARM families are in test_int8_intrinsics.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import graphs
import numpy as np
import pytest
import test_quantized as tq
import tvm
from onnx import numpy_helper
from tvm import relax

from nlpress.targets import get_target, lower, quantized
from nlpress.targets.schedules import int8_intrinsics

# (family, the CPU that selects it, its instruction, /proc/cpuinfo flags it needs to run).
X86_FAMILIES = [
    ("avx512-vnni", "znver4", "vpdpbusd\t%zmm", ("avx512f", "avx512_vnni")),
    ("avx-vnni", "alderlake", "{vex}\tvpdpbusd\t%ymm", ("avx_vnni",)),
    ("avx2", "haswell", "vpmaddwd\t%ymm", ("avx2",)),
    ("generic", "x86-64", "pmaddwd\t%xmm", ()),  # LLVM's own pick for the vector code
]
# Odd shapes: rows, k and n that fill no tile and no block exactly; symbolic rows (13 of them
# here) are summed in whole tiles.
SHAPES = [
    (7, 20, 24, 1),
    (5, 19, 33, 2),
    (16, 64, 48, "batch"),
    (1, 8, 16, 1),
    (13, 68, 56, 1),
    ("sequence", 20, 24, "batch"),
]


def _cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = next((li for li in text.splitlines() if li.startswith("flags")), "")
    return set(line.partition(":")[2].split())


HOST_FLAGS = _cpu_flags()


def _target(cpu: str) -> Any:
    return get_target("x86", mcpu=cpu)


@pytest.mark.parametrize(("family", "cpu", "instruction", "flags"), X86_FAMILIES)
def test_target_chooses_the_family(family: str, cpu: str, instruction: str, flags: Any) -> None:
    kernel = int8_intrinsics.int8_kernel(lower.tvm_target(_target(cpu)))
    assert kernel.family == family


@pytest.mark.parametrize(("family", "cpu", "instruction", "flags"), X86_FAMILIES)
def test_assembly_holds_the_instruction(
    family: str, cpu: str, instruction: str, flags: Any
) -> None:
    target = lower.tvm_target(_target(cpu))
    asm = tq._assembly(tq._scheduled_kernel(graphs.qdq_matmul(16, 64, 48), target), target)
    assert instruction in asm
    assert ("vpdpbusd" in asm) == ("vnni" in family)


@pytest.mark.parametrize(("family", "cpu", "instruction", "flags"), X86_FAMILIES)
@pytest.mark.parametrize(("m", "k", "n", "lead"), SHAPES)
def test_family_is_exact(
    family: str, cpu: str, instruction: str, flags: Any, m: int, k: int, n: int, lead: Any
) -> None:
    missing = [f for f in flags if f not in HOST_FLAGS]
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}: checked by its assembly only")
    proto, x, expected = graphs.exact_qdq_case(
        m, k, n, lead, zero_point=131, seed=k + n, weight_seed=k + n
    )
    np.testing.assert_array_equal(tq._run(proto, x, _target(cpu)), expected)


def test_symbolic_rows_run_tall_tiles_then_short_ones_exactly() -> None:
    """avx512-vnni: 12-row tiles over the rows that fill them, then 4-row ones, all vpdpbusd."""
    target = lower.tvm_target(_target("znver4"))
    proto, _, _ = graphs.exact_qdq_case("sequence", 68, 56)
    kernel = tq._scheduled_kernel(proto, target)
    assert str(kernel.script()).count("vpdpbusd") == 2  # the tall tiles' sum and the short ones'
    if "avx512_vnni" not in HOST_FLAGS:
        pytest.skip("this CPU lacks avx512_vnni: the stitched kernel's schedule is checked only")
    vm = relax.VirtualMachine(lower.build(lower.import_onnx(proto), _target("znver4")), tvm.cpu())
    for rows in (1, 4, 12, 13, 24, 27, 35):  # 0-2 tall tiles, 0-2 short ones
        _, x, expected = graphs.exact_qdq_case("sequence", 68, 56, symbolic_rows=rows)
        np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), expected)


@pytest.mark.parametrize("family", [f.family for f in int8_intrinsics.FAMILIES])
def test_every_weight_layout_is_exact_on_this_host(family: str) -> None:
    """Each family's packing and activation dtype, run through the generic vector kernel here."""
    kernel = next(f for f in int8_intrinsics.FAMILIES if f.family == family)
    proto, x, expected = graphs.exact_qdq_case(13, 68, 56, zero_point=0, seed=3, weight_seed=3)
    mod = quantized.rewrite_qdq_matmuls(
        lower.import_onnx(proto),
        activation_offset=kernel.activation_offset,
        block=kernel.block,
        activation_dtype=kernel.activation_dtype,
    )
    host = get_target("x86", mcpu="x86-64")  # the generic family, whatever the block
    vm = relax.VirtualMachine(lower.build(mod, host), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.skipif("avx2" not in HOST_FLAGS, reason="this CPU has no AVX2")
def test_avx2_is_exact_where_vpmaddubsw_would_saturate() -> None:
    """Activations 255 and weights of one sign: u8 x s8 pairs reach 64770, past int16's 32767."""
    m, k, n = 4, 32, 16
    proto = graphs.qdq_matmul(m, k, n, bias=False, scales=(1.0, 1.0), zero_point=0)
    wq = np.full((k, n), 127, np.int8)
    wq[:, 8:] = -128
    for init in proto.graph.initializer:
        if init.name == "wq":
            init.CopyFrom(numpy_helper.from_array(wq, "wq"))
    x = np.full((1, m, k), 255)
    target = _target("haswell")
    got = tq._run(proto, x.astype(np.float32), target)
    expected = np.maximum(x.astype(np.int64) @ wq.astype(np.int64), 0).astype(np.float32)
    assert expected.max() == 255 * 127 * k  # 16 pairs of 64770 each, no clipping
    np.testing.assert_array_equal(got, expected)
