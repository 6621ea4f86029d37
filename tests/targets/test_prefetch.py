"""A panel matmul's reduction loop prefetches its weight stream ahead, and computes as before."""

from __future__ import annotations

from typing import Any

import graphs
import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax, tirx

from nlpress.ir import Model
from nlpress.ir.verify import run
from nlpress.targets import get_target, lower, prefetch
from nlpress.targets.schedules import loops

AVX2 = get_target("x86", mcpu="haswell")


def _ffn(k: int, n: int) -> Any:
    """x @ W + b -> Gelu over a symbolic batch and sequence: a panel kernel."""
    rng = np.random.default_rng(k + n)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return graphs.dense(["batch", "sequence", k], w, b, "Gelu", opset=21).to_onnx()


@pytest.fixture
def marked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """The (marked loop, rewritten loop) pairs of the builds below."""
    seen: list[tuple[Any, Any]] = []
    real = prefetch._prefetched

    def spy(loop: Any) -> Any:
        result = real(loop)
        if prefetch.ANNOTATION in loop.annotations:
            seen.append((loop, result))
        return result

    monkeypatch.setattr(prefetch, "_prefetched", spy)
    return seen


@pytest.mark.parametrize("target", [AVX2, get_target("x86")], ids=["avx2", "host"])
def test_each_weight_vector_load_is_prefetched_a_few_kib_ahead(marked, target) -> None:
    proto = _ffn(40, 56)
    executable = lower.build(lower.import_onnx(proto), target)
    assert marked, "the panel rule marks its reduction loop"
    for loop, result in marked:
        loads = prefetch._streamed_loads(loop)
        prefetches = result.body.seq[: len(loads)]
        assert loads and all("llvm.prefetch" in str(p) for p in prefetches)
        assert prefetch.ANNOTATION not in result.annotations
        k, distance = loop.loop_var, int(loop.annotations[prefetch.ANNOTATION])
        step_bytes = sum(4 * load.ty.dtype.lanes for load in loads)  # one row of the panel
        assert distance == prefetch.AHEAD_BYTES // step_bytes
        for load, call in zip(loads, prefetches, strict=True):
            [index] = load.indices
            later = loops.substituted(index.base, [(k, k + distance)])
            assert tvm_ffi.structural_equal(call.value.args[1].args[0].indices[0], later)
    [library] = executable.mod.imports
    assert "prefetcht0" in library.inspect_source("asm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    for batch, rows in [(1, 1), (2, 13), (1, 37)]:
        x = np.random.default_rng(rows).standard_normal((batch, rows, 40)).astype(np.float32)
        expected = run(Model.from_onnx(proto), {"x": x})["y"]
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        bound = 1e-5 * float(np.abs(expected).max()) + 1e-5
        np.testing.assert_allclose(got, expected, rtol=0, atol=bound)


def test_unmarked_loops_are_left_alone(marked) -> None:
    i = tirx.Var("i", "int64")
    loop = tirx.For(i, 0, 8, tirx.ForKind.SERIAL, tirx.Evaluate(0))
    assert prefetch._prefetched(loop).same_as(loop)
