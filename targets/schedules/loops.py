"""Loop rewrites of scheduled TIR that no schedule primitive makes: copies of a loop's body.

TVM's `loop_partition` refuses a loop of symbolic extent, and a split of one guards its last
iteration. Here a loop's body is copied with its loop variable put as an expression of new
ones (`copy_with`): every variable the copy defines (its loops', its blocks' iterators) is
fresh, so the function stays well formed with both copies in it.

`vector_tails` cuts each loop that `mark_vector_tail` marked, of symbolic extent n, in two:

    for o in range(n // L): for v in vectorized(L): body(i = o * L + v)
    if n % L:
        if n >= L: for v in vectorized(L): body(i = n - L + v)
        else: for t in range(n): body(i = t)

whole vectors first, then the fewer than L iterations left in one more vector, the row's last
L elements: those it shares with the vectors before are computed and stored again, to the same
values (a body that reads what it writes gets a plain tail loop instead). No guard sits in a
vector loop (a guarded vector loop makes TVM emit every lane on its own), and a body too large
for LLVM's own vectorizer (a softmax's exponential) still runs in vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The loop annotation of `mark_vector_tail`, its value the vector's lanes.
VECTOR_TAIL = "nlpress_vector_tail"


def mark_vector_tail(sch: Any, loop: Any, lanes: int) -> None:
    """Mark an innermost loop of symbolic extent for `vector_tails`."""
    sch.annotate(loop, VECTOR_TAIL, lanes)


def vector_tails(func: Any) -> Any:
    """`func` with each marked loop cut in whole vectors and a tail (module doc)."""
    import tvm_ffi
    from tvm import tirx

    from nlpress.targets.stack_tiles import loop_with

    def cut(loop: Any) -> Any:
        if VECTOR_TAIL not in loop.annotations:
            return loop
        lanes = int(loop.annotations[VECTOR_TAIL])
        n, i = loop.extent, loop.loop_var
        whole = tirx.floordiv(n, lanes) * lanes
        outer, lane, last, tail = (tirx.Var(f"{i.name}_{s}", i.ty) for s in "ovlt")
        zero, width = tirx.const(0, i.ty.dtype), tirx.const(lanes, i.ty.dtype)

        def vector(var: Any, start: Any) -> Any:
            body = copy_with(loop.body, [(i, start + var)])
            return tirx.For(var, zero, width, tirx.ForKind.VECTORIZED, body)

        vectors = loop_with(
            loop,
            loop_var=outer,
            extent=n // lanes,
            annotations={},
            body=vector(lane, outer * lanes),
        )
        plain = copy_with(loop.body, [(i, whole + tail)])
        rest = loop_with(loop, loop_var=tail, extent=n - whole, annotations={}, body=plain)
        if _rewrites_itself(loop.body):
            return tirx.SeqStmt([vectors, rest])
        last_vector = tirx.IfThenElse(n >= lanes, vector(last, n - lanes), rest)
        return tirx.SeqStmt([vectors, tirx.IfThenElse(whole < n, last_vector, None)])

    body = tvm_ffi.structural_map(func.body, ((tirx.For, cut),))
    return func if body.same_as(func.body) else func.with_body(body)


def _rewrites_itself(stmt: Any) -> bool:
    """Whether a block of `stmt` reads a buffer it writes (then no element may be done twice)."""
    import tvm_ffi
    from tvm.s_tir import SBlock

    found: list[bool] = []

    def block(node: Any) -> None:
        written = {w.source for w in node.writes}
        found.append(any(r.source in written for r in node.reads))

    tvm_ffi.structural_walk(stmt, ((SBlock, block),))
    return any(found)


def copy_with(stmt: Any, values: Sequence[tuple[Any, Any]]) -> Any:
    """A copy of `stmt` with each pair's value put for its variable, and fresh definitions."""
    from tvm import tirx

    fresh = [(v, tirx.Var(v.name, v.ty)) for v in defined(stmt)]
    return substituted(stmt, [*values, *fresh])


def defined(stmt: Any) -> list[Any]:
    """The variables that `stmt` defines: its loops' and its blocks' iterators."""
    import tvm_ffi
    from tvm import tirx
    from tvm.s_tir import SBlock

    found: list[Any] = []
    tvm_ffi.structural_walk(
        stmt,
        (
            (tirx.For, lambda loop: found.append(loop.loop_var)),
            (SBlock, lambda block: found.extend(iv.var for iv in block.iter_vars)),
        ),
        order="pre",
    )
    return found


def substituted(node: Any, values: Sequence[tuple[Any, Any]]) -> Any:
    """`node` with each pair's value in place of its variable."""
    import tvm_ffi
    from tvm import tirx

    def put(var: Any) -> Any:
        return next((value for v, value in values if v.same_as(var)), var)

    return tvm_ffi.structural_map(node, ((tirx.Var, put),)) if values else node


def nested(stmt: Any) -> list[Any]:
    """The loops of `stmt`, outermost first."""
    import tvm_ffi
    from tvm import tirx

    found: list[Any] = []
    tvm_ffi.structural_walk(stmt, ((tirx.For, found.append),), order="pre")
    return found
