"""A parallel loop of symbolic extent runs in parallel only when its work is worth it."""

from typing import Any

import numpy as np
import pytest
import tvm
from tvm import s_tir, te, tirx

from nlpress.targets import parallel_when_worth
from nlpress.targets.stack_tiles import pipeline_for


def _doubling(rows: Any) -> Any:
    """b = 2a over [rows, 64], its rows a parallel loop."""
    a = te.placeholder((rows, 64), name="a")
    b = te.compute((rows, 64), lambda i, j: a[i, j] * 2.0, name="b")
    sch = s_tir.Schedule(te.create_prim_func([a, b]))
    row, column = sch.get_loops(sch.get_sblock("b"))
    sch.parallel(row)
    sch.vectorize(column)
    return sch.mod


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """The (loop, result) pairs of the pass's loops, as the builds below run it."""
    seen: list[tuple[Any, Any]] = []
    real = parallel_when_worth._guarded

    def spy(loop: Any) -> Any:
        seen.append((loop, real(loop)))
        return seen[-1][1]

    monkeypatch.setattr(parallel_when_worth, "_guarded", spy)
    return seen


def test_a_symbolic_parallel_loop_is_tested_and_both_branches_compute(guarded) -> None:
    target = tvm.target.Target("llvm")
    library = tvm.compile(
        _doubling(tirx.Var("rows", "int64")), target, tir_pipeline=pipeline_for(target)
    )
    [result] = [r for loop, r in guarded if loop.kind == tirx.ForKind.PARALLEL]
    assert isinstance(result, tirx.IfThenElse)
    assert result.then_case.kind == tirx.ForKind.PARALLEL
    assert result.else_case.kind == tirx.ForKind.SERIAL
    threshold = parallel_when_worth.MIN_WORK // 64
    for rows in (1, 7, threshold - 1, threshold, 3 * threshold + 5):  # serial, then parallel
        a = np.random.default_rng(rows).standard_normal((rows, 64)).astype(np.float32)
        b = tvm.runtime.tensor(np.zeros_like(a))
        library["main"](tvm.runtime.tensor(a), b)
        np.testing.assert_array_equal(b.numpy(), 2 * a)


def test_a_static_parallel_loop_is_left_to_its_schedule(guarded) -> None:
    target = tvm.target.Target("llvm")
    tvm.compile(_doubling(4096), target, tir_pipeline=pipeline_for(target))
    parallel = [(loop, r) for loop, r in guarded if loop.kind == tirx.ForKind.PARALLEL]
    assert parallel and all(loop.same_as(result) for loop, result in parallel)
