"""An aarch64 artifact, cross-compiled here, runs under qemu-user and matches numpy."""

from __future__ import annotations

import shutil
from pathlib import Path

import graphs
import numpy as np
import pytest
from onnx import TensorProto, helper

from nlpress.ir.verify import run
from nlpress.passes import parse, run_pipeline
from nlpress.targets import build_artifact, emulation, get_target

# Runs on the emulated aarch64 Python with the TVM runtime library only (no compiler), as on a
# deployment machine.
RUN_SCRIPT = """
import platform, sys
import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

lib_path, x_path, out_path = sys.argv[1:]
vm = VirtualMachine(tvm.runtime.load_module(lib_path), tvm.cpu())
out = vm["main"](tvm.runtime.tensor(np.load(x_path)))
np.save(out_path, out.numpy())
print(platform.machine())
"""


SKIP_REASON = emulation.available()
if SKIP_REASON is None and shutil.which("aarch64-linux-gnu-gcc") is None:
    SKIP_REASON = "aarch64-linux-gnu-gcc not found: run .ci/setup-arm.sh"
needs_emulation = pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))


def _build_aarch64(model: object, out: Path) -> None:
    import tvm
    import tvm.support.cc
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(model, keep_params_in_input=False)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    relax.build(mod, target=target).export_library(
        str(out), fcompile=tvm.support.cc.cross_compiler("aarch64-linux-gnu-gcc")
    )


@pytest.mark.slow
@needs_emulation
def test_aarch64_artifact_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    _build_aarch64(graphs.dense([2, 16], w).to_onnx(), tmp_path / "model.so")
    np.save(tmp_path / "x.npy", x)

    proc = emulation.run_python(
        RUN_SCRIPT,
        args=[str(tmp_path / "model.so"), str(tmp_path / "x.npy"), str(tmp_path / "z.npy")],
        env={"TVM_USE_RUNTIME_LIB": "1"},
    )

    assert proc.stdout.split() == ["aarch64"]
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), np.maximum(x @ w, 0), atol=1e-5)


@pytest.mark.slow
@needs_emulation
def test_4_bit_grouped_weights_and_table_match_onnx_runtime(tmp_path: Path) -> None:
    """quantize-weights' 4-bit groups (k=40 in groups of 8, n=24, m=10, a Gather over a 30x40
    table) built for arm: the artifact matches ONNX Runtime (no graph optimizations) on the
    model it was built from, over symbolic rows."""
    from nlpress.targets.arm import run_emulated

    rng = np.random.default_rng(1)
    k, n, m, vocab = 40, 24, 10, 30
    table, w, b, w2 = (rng.standard_normal(s).astype(np.float32) for s in
                       ((vocab, k), (k, n), (n,), (n, m)))  # fmt: skip
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"], name="embed"),
        helper.make_node("MatMul", ["rows", "w"], ["h"], name="up/MatMul"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="up/Add"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="down/MatMul"),
    ]
    ids = ["batch", "sequence"]
    inits = {"table": table, "w": w, "b": b, "w2": w2}
    model = graphs.model(
        nodes,
        [graphs.tensor("ids", ids, TensorProto.INT64)],
        [graphs.tensor("y", [*ids, m])],
        [graphs.initializer(name, value) for name, value in inits.items()],
    )
    quantized = run_pipeline(model, parse("fold,quantize-weights{group=8},cleanup")).model
    dequantize = [n for n in quantized.graph.nodes if n.op == "DequantizeLinear"]
    assert [n.attrs["block_size"] for n in dequantize] == [8, 8, 8]
    assert {np.asarray(n.inputs[0].values).dtype.name for n in dequantize} == {"uint4"}

    out = build_artifact(quantized, get_target("arm"), tmp_path / "arm", manifest={})
    shapes = [(1, 1), (2, 7), (3, 17)]
    feeds = [{"ids": rng.integers(0, vocab, s).astype(np.int64)} for s in shapes]
    for one, [got] in zip(feeds, run_emulated(out, feeds), strict=True):
        expected = run(quantized, one)["y"]
        bound = 1e-5 * float(np.abs(expected).max())
        np.testing.assert_allclose(got, expected, rtol=0, atol=bound)


@pytest.mark.slow
@needs_emulation
def test_failure_raises_with_the_tail_of_stderr() -> None:
    with pytest.raises(emulation.EmulationError, match=r"exited with 3:\n.*boom"):
        emulation.run_python("import sys; print('boom', file=sys.stderr); sys.exit(3)")


def test_unavailable_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    assert emulation.available() == "qemu-aarch64 not found: run .ci/setup-arm.sh"
    with pytest.raises(emulation.EmulationError, match="qemu-aarch64 not found"):
        emulation.aarch64_root()
