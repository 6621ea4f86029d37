"""Target descriptors: x86 (the host CPU by default), arm (aarch64 + NEON), cuda (one sm arch).

A Target is data only: the TVM target as a JSON dict (TVM 0.27 takes dicts), the cross compiler
that links its library, and the device that runs it. `get_target` validates the user's options
and lists the valid ones on a mistake.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nlpress.ir import UsageError

TARGET_NAMES = ("x86", "arm", "cuda")

# GPU architectures that both TVM's CUDA codegen and CUDA 13's nvcc compile for.
CUDA_ARCHES = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_100", "sm_120")
DEFAULT_CUDA_ARCH = "sm_80"

# aarch64 features `--mattr` may add on top of +neon (LLVM's names).
ARM_FEATURES = ("neon", "dotprod", "i8mm", "sve", "sve2", "fullfp16", "bf16")

X86_TRIPLE = "x86_64-linux-gnu"
ARM_TRIPLE = "aarch64-linux-gnu"
ARM_CC = "aarch64-linux-gnu-gcc"


class TargetError(UsageError):
    """An unknown target, CPU, feature or GPU architecture."""


@dataclass(frozen=True)
class Target:
    """Where an artifact runs and how it is built.

    Attributes:
        name: One of TARGET_NAMES.
        tvm_target: The TVM target as a JSON dict, e.g. {"kind": "llvm", "mcpu": "znver4"}.
        tvm_host: The host target for device targets (cuda), else None.
        cross_compiler: The C compiler that links the library, e.g. "aarch64-linux-gnu-gcc";
            None for the host's default compiler.
        device: The TVM device kind that runs the artifact: "cpu" or "cuda".
        arch: The GPU architecture for cuda, e.g. "sm_80"; None for CPUs.
        options: The user's options that chose this target, for the manifest.

    """

    name: str
    tvm_target: Mapping[str, Any]
    tvm_host: Mapping[str, Any] | None = None
    cross_compiler: str | None = None
    device: str = "cpu"
    arch: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description of the target, for the artifact manifest."""
        return {
            "name": self.name,
            "tvm_target": dict(self.tvm_target),
            "tvm_host": dict(self.tvm_host) if self.tvm_host else None,
            "cross_compiler": self.cross_compiler,
            "device": self.device,
            "arch": self.arch,
            "options": dict(self.options),
        }

    @property
    def runs_on_host(self) -> bool:
        """Whether this machine can run the artifact (an x86 build for the detected host CPU)."""
        return self.name == "x86" and not self.options.get("mcpu")


def get_target(
    name: str,
    *,
    mcpu: str | None = None,
    mattr: Sequence[str] = (),
    arch: str | None = None,
) -> Target:
    """The descriptor of target `name` with the user's options.

    Args:
        name: "x86", "arm" or "cuda".
        mcpu: x86 only: an LLVM CPU name (e.g. znver4, skylake-avx512, x86-64-v3); default
            the host CPU.
        mattr: arm only: features to add to +neon (dotprod, i8mm, sve, ...).
        arch: cuda only: the GPU architecture, default sm_80.

    Raises:
        TargetError: An unknown name, an option the target does not take, or an invalid value;
            the message lists the valid values.

    """
    if name not in TARGET_NAMES:
        raise TargetError(f"unknown target {name!r}; valid targets: {', '.join(TARGET_NAMES)}")
    _reject_foreign_options(name, mcpu=mcpu, mattr=mattr, arch=arch)
    if name == "x86":
        return _x86(mcpu)
    if name == "arm":
        return _arm(mattr)
    return _cuda(arch or DEFAULT_CUDA_ARCH)


def _reject_foreign_options(name: str, **options: Any) -> None:
    takes = {"x86": "mcpu", "arm": "mattr", "cuda": "arch"}[name]
    for key, value in options.items():
        if value and key != takes:
            raise TargetError(f"target {name} takes no --{key}; it takes --{takes}")


# LLVM may divide by multiplying with the reciprocal (-freciprocal-math): a division by a
# constant or by a value computed once (GELU's x / sqrt(2), a softmax row's sum) becomes a
# multiplication, within one unit in the last place. minilm-l6 int8 over sentences ran 2% faster
# on a Sapphire Rapids, paired.
RECIPROCAL_MATH = {"fast-math-arcp": True}


def _x86(mcpu: str | None) -> Target:
    cpu = mcpu or host_cpu()
    if cpu not in x86_cpus():
        raise TargetError(f"unknown x86 CPU {cpu!r}; valid: {', '.join(x86_cpus())}")
    tvm_target = {"kind": "llvm", "mtriple": X86_TRIPLE, "mcpu": cpu, **RECIPROCAL_MATH}
    return Target("x86", tvm_target, options={"mcpu": mcpu})


def _arm(mattr: Sequence[str]) -> Target:
    features = ["+neon"]
    for raw in mattr:
        for item in filter(None, (part.strip() for part in re.split(r"[,\s]+", raw))):
            feature = item.lstrip("+")
            if feature not in ARM_FEATURES:
                raise TargetError(
                    f"unknown aarch64 feature {item!r}; valid: {', '.join(ARM_FEATURES)}"
                )
            if f"+{feature}" not in features:
                features.append(f"+{feature}")
    tvm_target = {"kind": "llvm", "mtriple": ARM_TRIPLE, "mattr": features}
    return Target("arm", tvm_target, cross_compiler=ARM_CC, options={"mattr": features[1:]})


def _cuda(arch: str) -> Target:
    if arch not in CUDA_ARCHES:
        raise TargetError(f"unknown CUDA architecture {arch!r}; valid: {', '.join(CUDA_ARCHES)}")
    tvm_target = {"kind": "cuda", "arch": arch}
    host = {"kind": "llvm", "mtriple": X86_TRIPLE}
    return Target("cuda", tvm_target, host, device="cuda", arch=arch, options={"arch": arch})


@functools.cache
def host_cpu() -> str:
    """The host CPU's LLVM name, as TVM's LLVM detects it (e.g. znver4, sapphirerapids)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


@functools.cache
def x86_cpus() -> tuple[str, ...]:
    """Every x86 CPU name TVM's LLVM knows."""
    import tvm
    from tvm.target import codegen

    target = tvm.target.Target({"kind": "llvm", "mtriple": X86_TRIPLE})
    return tuple(sorted(str(cpu) for cpu in codegen.llvm_get_cpu_archlist(target)))
