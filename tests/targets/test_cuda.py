"""CUDA artifacts hold nvcc-compiled device code for the asked architecture, not CUDA source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nlpress.ir import Model
from nlpress.ir.verify import run
from nlpress.targets import build_artifact, get_target, load
from nlpress.targets.cuda import device_code, packed_modules

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")


def _has_gpu() -> bool:
    import tvm

    try:
        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


@pytest.fixture(scope="module", params=["sm_80", "sm_90"])
def cuda_artifact(
    request: pytest.FixtureRequest, tiny_model: Model, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found")
    arch = request.param
    out = tmp_path_factory.mktemp(arch) / "artifact"
    return arch, build_artifact(tiny_model, get_target("cuda", arch=arch), out, manifest={})


@needs_nvcc
def test_library_holds_a_cubin_for_the_arch(cuda_artifact: tuple[str, Path]) -> None:
    arch, out = cuda_artifact
    images = device_code(out / "model.so")
    cubins = [i for i in images if i.kind == "elf"]
    assert [i.arch for i in cubins] == [arch]
    assert {"fused_matmul_relu_kernel", "cast_kernel"} <= set(cubins[0].kernels)
    assert [i.arch for i in images if i.kind == "ptx"] == [arch]  # PTX for newer GPUs


@needs_nvcc
def test_cuda_module_is_packed_as_fatbin(cuda_artifact: tuple[str, Path]) -> None:
    arch, out = cuda_artifact
    assert ("cuda", "fatbin") in packed_modules(out / "model.so")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device_code"]["images"] == [f"ptx:{arch}", f"elf:{arch}"]
    assert manifest["target"]["tvm_target"] == {"kind": "cuda", "arch": arch}


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="no CUDA GPU present")
def test_cuda_artifact_runs_on_the_gpu(tiny_model: Model, tmp_path: Path) -> None:
    import tvm

    major, minor = tvm.cuda(0).compute_version.split(".")
    arch = f"sm_{major}{minor}" if f"sm_{major}{minor}" in ("sm_80", "sm_90") else "sm_80"
    out = build_artifact(tiny_model, get_target("cuda", arch=arch), tmp_path / "a", manifest={})
    feeds = {
        "x": np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32),
        "ids": np.arange(15, dtype=np.int64).reshape(5, 3),
    }
    expected = run(tiny_model, feeds)
    z, idf = load(out).run(None, feeds)
    np.testing.assert_allclose(z, expected["z"], atol=1e-5)
    np.testing.assert_array_equal(idf, expected["idf"])
