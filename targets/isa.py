"""The instruction sets an artifact's code needs, named as the Linux kernel reports them.

LLVM may use every feature of the CPU it compiles for, so a library built for `znver4` runs
only where AVX-512 does. The manifest records the features that matter for nlpress's kernels
(table `FEATURES`) as `/proc/cpuinfo` (x86) or the kernel's HWCAP names (aarch64) spell them,
and the runtime refuses, with one line, to load a library on a CPU that lacks one.
"""

from __future__ import annotations

from typing import Any

# (LLVM feature, Linux name), per architecture.
FEATURES = {
    "x86": (
        ("sse4.2", "sse4_2"),
        ("avx", "avx"),
        ("avx2", "avx2"),
        ("fma", "fma"),
        ("f16c", "f16c"),
        ("bmi2", "bmi2"),
        ("avx512f", "avx512f"),
        ("avx512bw", "avx512bw"),
        ("avx512dq", "avx512dq"),
        ("avx512vl", "avx512vl"),
        ("avx512vnni", "avx512_vnni"),
        ("avx512bf16", "avx512_bf16"),
        ("avxvnni", "avx_vnni"),
    ),
    "aarch64": (
        ("neon", "asimd"),
        ("fullfp16", "asimdhp"),
        ("dotprod", "asimddp"),
        ("i8mm", "i8mm"),
        ("bf16", "bf16"),
        ("sve", "sve"),
        ("sve2", "sve2"),
    ),
}


def arch_of(tvm_target: Any) -> str | None:
    """The architecture of an LLVM CPU target ("x86" or "aarch64"), None for other targets."""
    if tvm_target.kind.name != "llvm":
        return None
    return "aarch64" if str(tvm_target.attrs.get("mtriple", "")).startswith("aarch64") else "x86"


def required_features(tvm_target: Any) -> list[str]:
    """The Linux names of the features in `FEATURES` that code for `tvm_target` may use."""
    from tvm.target import codegen

    arch = arch_of(tvm_target)
    if arch is None:
        return []
    return [name for llvm, name in FEATURES[arch] if codegen.target_has_features(llvm, tvm_target)]


def kernel_facts(tvm_target: Any) -> dict[str, Any]:
    """What the manifest records about a CPU target's code: arch, CPU, features, kernels."""
    from nlpress.targets.schedules.int8_intrinsics import int8_kernel
    from nlpress.targets.schedules.panels import panel_tile

    arch = arch_of(tvm_target)
    if arch is None:
        return {}
    tile = panel_tile(tvm_target)
    int8 = int8_kernel(tvm_target)
    return {
        "arch": arch,
        "cpu": str(tvm_target.attrs.get("mcpu", "")) or None,
        "features": required_features(tvm_target),
        "kernels": {
            "int8": int8.family,
            "int8_instruction": int8.instruction,
            "fp32": f"panels {tile[0]}x{tile[1]}" if tile else "matmul",
        },
    }


def describe(facts: dict[str, Any]) -> str:
    """One line for the user: the CPU, and the kernel families chosen for it."""
    kernels = facts["kernels"]
    instruction = f" ({kernels['int8_instruction']})" if kernels["int8_instruction"] else ""
    cpu = facts["cpu"] or facts["arch"]
    return f"{cpu}: int8 kernels {kernels['int8']}{instruction}, fp32 {kernels['fp32']}"
