"""Weight streams prefetched ahead: a matmul's reduction loop asks for its panel lines early.

Over a sentence's few rows a matmul is a stream of its weights: every weight is read once per
row tile, and the first row tile of a panel reads it from L3 or memory (a model's weights do not
fit in L2); the hardware prefetchers alone do not hide that latency. A schedule rule marks the
reduction loop whose vector loads read the weight panel (`mark`); this PrimFunc pass, in the
host finalization, puts before each such load

    prefetch(&W[index(k + distance)])

the same load `distance` steps of k later (AHEAD_BYTES of the stream ahead), for each vector
load of the loop body whose index moves with k. Prefetches never fault, so the steps past the
panel's end (the next panel's first lines, or past the buffer) need no guard. Loads are
unchanged: the outputs are bitwise the same.
"""

from __future__ import annotations

from typing import Any

from nlpress.targets.schedules.loops import substituted

# The loop annotation that marks a reduction loop over weight panels, its value the distance.
ANNOTATION = "nlpress_prefetch"
# How far ahead of its load a line is asked for: 16 steps of a 64-float panel row, 32 of a 32-float
# one (8 and 32 steps of 64 floats ran minilm-l6 over sentences 2% and 1% slower, paired, on a
# Sapphire Rapids).
AHEAD_BYTES = 4096


def mark(sch: Any, loop: Any, bytes_per_step: int) -> None:
    """Mark a reduction `loop` that reads `bytes_per_step` of weights a step to prefetch them."""
    sch.annotate(loop, ANNOTATION, max(1, AHEAD_BYTES // bytes_per_step))


def prefetch_pass() -> Any:
    """The PrimFunc pass of the module doc."""
    from nlpress.targets.stack_tiles import rebuild_pass

    return rebuild_pass("PrefetchWeights", loop=_prefetched)


def _prefetched(loop: Any) -> Any:
    """A marked loop with its weight loads prefetched ahead; other loops as they are."""
    from tvm import tirx

    from nlpress.targets.stack_tiles import loop_with

    if ANNOTATION not in loop.annotations:
        return loop
    distance = int(loop.annotations[ANNOTATION])
    later = [(loop.loop_var, loop.loop_var + distance)]
    prefetches = [_prefetch(load, later) for load in _streamed_loads(loop)]
    annotations = {k: v for k, v in loop.annotations.items() if k != ANNOTATION}
    body = tirx.SeqStmt([*prefetches, loop.body]) if prefetches else loop.body
    return loop_with(loop, body=body, annotations=annotations)


def _prefetch(load: Any, values: list[tuple[Any, Any]]) -> Any:
    """`prefetch(&load[0])` with `values` put for its variables: for reading, all cache levels."""
    from tvm import tirx

    [index] = load.indices  # flattened
    first = substituted(index.base if isinstance(index, tirx.Ramp) else index, values)
    address = tirx.address_of(tirx.BufferLoad(load.source, [first]))
    return tirx.Evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, 0, 3, 1))


def _streamed_loads(loop: Any) -> list[Any]:
    """The distinct vector loads of `loop`'s body whose index moves with its variable.

    Their indices are written out in the loop's own variable: the values of the body's bindings
    (common subexpressions) are put in for the variables they bind.
    """
    import tvm_ffi
    from tvm import tirx
    from tvm.ir.expr import TensorLoad  # what tirx.BufferLoad builds

    bound: list[tuple[Any, Any]] = []
    found: dict[str, Any] = {}

    def binding(stmt: Any) -> None:
        bound.append((stmt.var, substituted(stmt.value, bound)))

    def load(node: Any) -> None:
        if node.ty.dtype.lanes == 1:
            return
        indices = [substituted(i, bound) for i in node.indices]
        if any(v.same_as(loop.loop_var) for i in indices for v in tirx.analysis.undefined_vars(i)):
            found.setdefault(str(node), tirx.BufferLoad(node.source, indices))

    tvm_ffi.structural_walk(loop.body, ((tirx.Bind, binding), (TensorLoad, load)), order="pre")
    return list(found.values())
