"""Parallel loops of symbolic extent run in parallel only when their work, at run time, is worth it.

A schedule rule decides a static kernel's parallelism by its work (`schedules.common
.worth_parallel`), but a kernel over a sentence's tokens has a symbolic extent: it was made
parallel whatever the sentence. Every parallel loop is a launch of the thread pool and a wait
for all its threads, a few microseconds that a 20-token softmax or layer norm does not repay.
This PrimFunc pass puts such a loop behind a test of its work at run time:

    if (work >= MIN_WORK) parallel for ... else for ...

with work the elements the loop nest stores (each loop's extent times its body's, sibling loops
added, a vector store counting its lanes), the measure the rules use for static kernels (a
matmul's multiply-adds are stores to its accumulators). A nest whose work depends on values
computed inside it keeps its parallel loop. MIN_WORK is lower than the rules' static threshold,
which leaves loops serial that a 60-token sentence already runs faster in parallel.
"""

from __future__ import annotations

from typing import Any

MIN_WORK = 1 << 15  # elements


def parallel_when_worth_pass() -> Any:
    """The PrimFunc pass of the module doc."""
    from nlpress.targets.stack_tiles import rebuild_pass

    return rebuild_pass("ParallelWhenWorth", loop=_guarded)


def _guarded(loop: Any) -> Any:
    """A parallel loop of symbolic extent behind its run-time work test; others as they are."""
    from tvm import tirx

    from nlpress.targets.stack_tiles import loop_with

    if loop.kind != tirx.ForKind.PARALLEL or isinstance(loop.extent, tirx.IntImm):
        return loop
    work = _work(loop)
    if work is None:
        return loop
    outside = tirx.analysis.undefined_vars(loop)
    if not all(any(v.same_as(o) for o in outside) for v in tirx.analysis.undefined_vars(work)):
        return loop  # it counts something computed inside the nest
    serial = loop_with(loop, kind=tirx.ForKind.SERIAL)
    worth = tirx.Cast("int64", work) >= tirx.IntImm("int64", MIN_WORK)
    return tirx.IfThenElse(worth, loop, serial, loop.span)


def _work(stmt: Any) -> Any:
    """The elements a statement stores, as a PrimExpr (None where it cannot tell)."""
    from tvm import tirx

    if isinstance(stmt, tirx.For):
        inner = _work(stmt.body)
        return None if inner is None else tirx.Cast("int64", stmt.extent) * inner
    if isinstance(stmt, tirx.SeqStmt):
        parts = [_work(s) for s in stmt.seq]
        if any(p is None for p in parts):
            return None
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total
    if isinstance(stmt, tirx.IfThenElse):
        then = _work(stmt.then_case)
        other = tirx.IntImm("int64", 0) if stmt.else_case is None else _work(stmt.else_case)
        return None if then is None or other is None else tirx.max(then, other)
    if isinstance(stmt, tirx.AttrStmt):
        return _work(stmt.body)
    if isinstance(stmt, tirx.While):
        return None
    if isinstance(stmt, tirx.Bind):
        return tirx.IntImm("int64", 0)
    if isinstance(stmt, tirx.BufferStore):  # a vector store is one element a lane
        return tirx.IntImm("int64", int(stmt.value.ty.dtype.lanes))
    return tirx.IntImm("int64", 1)
