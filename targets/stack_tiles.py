"""Register tiles on the stack: CPU kernels keep their small local buffers out of the heap.

TVM's host lowering (LowerTVMBuiltin) serves every buffer of "local" scope, and every
"global" one of 1024 bytes or more, with TVMBackendAllocWorkspace: a call into the runtime's
workspace pool, and a free, each time the buffer's scope is entered. A matmul's register tile
(the MR x NR accumulators, `schedules/matmul.py`) is such a buffer, entered once per tile of
the parallel loop; behind an opaque pointer LLVM cannot keep it in registers either. Buffers of
constant size up to STACK_LIMIT bytes are annotated to stay allocations (TVM's own
`disable_lower_builtin`), which LLVM places on the stack of the function's entry and promotes
to registers where it can.

`TIR_PIPELINE` names TVM's default s_tir pipeline with this pass first in the host
finalization, then `prefetch` and `parallel_when_worth`; `pipeline_for` registers it and gives
its name for CPU targets.
"""

from __future__ import annotations

from typing import Any

TIR_PIPELINE = "nlpress_cpu"
STACK_LIMIT = 16384  # bytes; far below a thread's stack, far above a register tile
_DISABLE_LOWER_BUILTIN = "disable_lower_builtin"  # tvm::tirx::transform::kDisableLowerTVMBuiltin
_FOR_FIELDS = (
    "loop_var", "min", "extent", "kind", "body", "thread_binding", "annotations", "step", "span",
)  # fmt: skip


def stack_tiles_pass() -> Any:
    """The PrimFunc pass that keeps small constant-size local buffers on the stack."""
    return rebuild_pass("StackTiles", leaf=_on_stack)


def _on_stack(stmt: Any) -> Any:
    """An AllocBuffer of a small constant-size local buffer, annotated to stay on the stack."""
    from tvm import tirx

    if not isinstance(stmt, tirx.AllocBuffer) or stmt.buffer.scope() != "local":
        return stmt
    dtype, size = stmt.buffer.dtype, 1
    for extent in stmt.buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return stmt
        size *= int(extent)
    if size * dtype.bits * dtype.lanes > 8 * STACK_LIMIT:
        return stmt
    annotations = {**stmt.annotations, _DISABLE_LOWER_BUILTIN: tirx.IntImm("bool", 1)}
    return tirx.AllocBuffer(stmt.buffer, annotations, stmt.span)


def _same(stmt: Any) -> Any:
    return stmt


def rebuild(stmt: Any, leaf: Any = _same, loop: Any = _same) -> Any:
    """`stmt` with `leaf` applied to its innermost statements and `loop` to its loops.

    `loop` sees each loop once its body is rebuilt; there is no Python statement mutator.
    Only the statements that nest others are taken apart (sequences, loops, branches,
    attributes); AllocBuffer declares a buffer for the rest of its sequence, so it is a leaf.
    """
    from tvm import tirx

    def again(inner: Any) -> Any:
        return rebuild(inner, leaf, loop)

    if isinstance(stmt, tirx.SeqStmt):
        items = [again(s) for s in stmt.seq]
        same = all(a.same_as(b) for a, b in zip(items, stmt.seq, strict=True))
        return stmt if same else tirx.SeqStmt(items, stmt.span)
    if isinstance(stmt, tirx.For):
        body = again(stmt.body)
        return loop(stmt if body.same_as(stmt.body) else loop_with(stmt, body=body))
    if isinstance(stmt, tirx.IfThenElse):
        then = again(stmt.then_case)
        other = None if stmt.else_case is None else again(stmt.else_case)
        if then.same_as(stmt.then_case) and (other is None or other.same_as(stmt.else_case)):
            return stmt
        return tirx.IfThenElse(stmt.condition, then, other, stmt.span)
    if isinstance(stmt, tirx.AttrStmt):
        body = again(stmt.body)
        if body.same_as(stmt.body):
            return stmt
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, body, stmt.span)
    if isinstance(stmt, tirx.While):
        body = again(stmt.body)
        return stmt if body.same_as(stmt.body) else tirx.While(stmt.condition, body, stmt.span)
    return leaf(stmt)


def rebuild_pass(name: str, leaf: Any = _same, loop: Any = _same) -> Any:
    """A PrimFunc pass that `rebuild`s each function's body with `leaf` and `loop`."""
    from tvm import tirx

    @tirx.transform.prim_func_pass(opt_level=0, name=name)  # type: ignore[untyped-decorator]
    def _pass(func: Any, _mod: Any, _ctx: Any) -> Any:
        body = rebuild(func.body, leaf, loop)
        return func if body.same_as(func.body) else func.with_body(body)

    return _pass


def loop_with(loop: Any, **changes: Any) -> Any:
    """A copy of the For `loop` with the fields named in `changes` (kind, body, annotations)."""
    from tvm import tirx

    return tirx.For(**{name: getattr(loop, name) for name in _FOR_FIELDS} | changes)


def pipeline_for(tvm_target: Any) -> str:
    """The TIR pipeline that kernels for `tvm_target` are built with: TIR_PIPELINE on CPUs."""
    return register() if str(tvm_target.kind.name) in ("llvm", "c") else "default"


def register() -> str:
    """Register TIR_PIPELINE with tvm.tirx; returns its name."""
    import tvm
    from tvm.s_tir import pipeline as s_tir_pipeline
    from tvm.tirx import compilation_pipeline

    from nlpress.targets.parallel_when_worth import parallel_when_worth_pass
    from nlpress.targets.prefetch import prefetch_pass

    def factory() -> tuple[Any, Any, Any]:
        lower, finalize_host, finalize_device = s_tir_pipeline.default_s_tir_pipeline()

        def finalize_host_for_cpu() -> Any:
            passes = [
                stack_tiles_pass(),
                prefetch_pass(),
                parallel_when_worth_pass(),
                tvm.tirx.transform.ConvertSSA(),  # its two copies of a loop define new vars
                finalize_host(),
            ]
            return tvm.ir.transform.Sequential(passes)

        return lower, finalize_host_for_cpu, finalize_device

    compilation_pipeline.register_tir_pipeline(TIR_PIPELINE, factory)
    return TIR_PIPELINE
