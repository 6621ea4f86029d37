"""Target descriptors: valid options, and errors that list the valid values."""

from __future__ import annotations

import pytest

from nlpress.ir import UsageError
from nlpress.targets import CUDA_ARCHES, Target, TargetError, get_target
from nlpress.targets.target import host_cpu


def test_x86_defaults_to_the_host_cpu() -> None:
    target = get_target("x86")
    assert target.tvm_target == {
        "kind": "llvm",
        "mtriple": "x86_64-linux-gnu",
        "mcpu": host_cpu(),
        "fast-math-arcp": True,  # divisions may multiply by the reciprocal
    }
    assert target.device == "cpu" and target.cross_compiler is None
    assert target.runs_on_host


def test_x86_mcpu_overrides() -> None:
    target = get_target("x86", mcpu="znver4")
    assert target.tvm_target["mcpu"] == "znver4"
    assert target.describe()["options"] == {"mcpu": "znver4"}
    assert not target.runs_on_host


def test_arm_adds_features_to_neon() -> None:
    target = get_target("arm", mattr=["dotprod", "+i8mm,sve"])
    assert target.tvm_target["mattr"] == ["+neon", "+dotprod", "+i8mm", "+sve"]
    assert target.tvm_target["mtriple"] == "aarch64-linux-gnu"
    assert target.cross_compiler == "aarch64-linux-gnu-gcc"


def test_cuda_default_arch_and_host() -> None:
    target = get_target("cuda")
    assert target.arch == "sm_80" and target.device == "cuda"
    assert target.tvm_target == {"kind": "cuda", "arch": "sm_80"}
    assert target.tvm_host is not None and target.tvm_host["kind"] == "llvm"


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("riscv", {}, "unknown target 'riscv'; valid targets: x86, arm, cuda"),
        ("cuda", {"arch": "sm_61"}, "unknown CUDA architecture 'sm_61'; valid: sm_75, sm_80"),
        ("x86", {"mcpu": "pentium9"}, "unknown x86 CPU 'pentium9'; valid: "),
        ("arm", {"mattr": ["avx2"]}, "unknown aarch64 feature 'avx2'; valid: neon, dotprod"),
        ("x86", {"arch": "sm_80"}, "target x86 takes no --arch; it takes --mcpu"),
    ],
)
def test_bad_options_list_the_valid_ones(name: str, options: dict, message: str) -> None:
    with pytest.raises(TargetError, match="^" + message.replace("(", r"\(")) as info:
        get_target(name, **options)
    assert isinstance(info.value, UsageError)


def test_describe_is_json_ready() -> None:
    import json

    for name in ("x86", "arm", "cuda"):
        target = get_target(name)
        assert isinstance(target, Target)
        assert json.loads(json.dumps(target.describe()))["name"] == name
    assert "sm_90" in CUDA_ARCHES
