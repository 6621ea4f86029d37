"""The manifest names the CPU features an artifact's code needs; the runtime refuses the rest."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from nlpress.ir import Model
from nlpress.targets import ArtifactError, build_artifact, get_target, isa, load, lower, runtime


@pytest.mark.parametrize(
    ("target", "needs", "lacks"),
    [
        (get_target("x86", mcpu="haswell"), {"avx2", "fma"}, {"avx512f", "avx_vnni"}),
        (get_target("x86", mcpu="znver4"), {"avx512f", "avx512_vnni"}, {"avx_vnni"}),
        (get_target("x86", mcpu="alderlake"), {"avx_vnni", "avx2"}, {"avx512f"}),
        (get_target("arm", mattr=["dotprod"]), {"asimd", "asimddp"}, {"i8mm", "sve"}),
    ],
    ids=["haswell", "znver4", "alderlake", "arm-dotprod"],
)
def test_required_features_follow_the_target(
    target: object, needs: set[str], lacks: set[str]
) -> None:
    features = set(isa.required_features(lower.tvm_target(target)))  # type: ignore[arg-type]
    assert needs <= features and not lacks & features


def test_manifest_records_the_code_and_kernels(tiny_model: Model, tmp_path: Path) -> None:
    out = build_artifact(tiny_model, get_target("x86", mcpu="haswell"), tmp_path / "a", manifest={})
    code = json.loads((out / "manifest.json").read_text())["code"]
    assert code["arch"] == "x86" and code["cpu"] == "haswell"
    assert code["kernels"] == {
        "int8": "avx2",
        "int8_instruction": "vpmaddwd",
        "fp32": "panels 6x16",
    }
    assert isa.describe(code) == "haswell: int8 kernels avx2 (vpmaddwd), fp32 panels 6x16"


def _with_code(artifact: Path, code: dict[str, object]) -> Path:
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["code"] = {**manifest["code"], **code}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    return artifact


def test_missing_feature_is_one_clear_error(tiny_model: Model, tmp_path: Path) -> None:
    out = build_artifact(tiny_model, get_target("x86"), tmp_path / "a", manifest={})
    load(out)  # built for this host: loads
    _with_code(out, {"features": ["avx2", "nlpress_no_such_feature"], "cpu": "futurecpu"})
    with pytest.raises(ArtifactError, match="built for futurecpu, its code needs nlpress_no_such"):
        load(out)


def test_other_architecture_is_refused(tiny_model: Model, tmp_path: Path) -> None:
    out = build_artifact(tiny_model, get_target("x86"), tmp_path / "a", manifest={})
    _with_code(out, {"arch": "aarch64"})
    with pytest.raises(ArtifactError, match="an aarch64 artifact; this machine is"):
        load(out)


def test_aarch64_features_come_from_the_auxiliary_vector() -> None:
    hwcap = 1 << 1 | 1 << 20  # asimd, asimddp
    hwcap2 = 1 << 13  # i8mm
    auxv = struct.pack("<8Q", 6, 4096, 16, hwcap, 26, hwcap2, 0, 0)
    assert runtime._auxv_features(auxv) == {"asimd", "asimddp", "i8mm"}
