"""Softmax over a row of symbolic length, reduced in vector lanes.

TVM's softmax reduces the row serially: its max and its sum of exponentials are each one chain
of dependent operations, and a row whose length is only known at run time cannot be split into
whole vectors by the schedule without a guard on every lane. Here the row of length n is cut in
two ranges written out in the compute itself: the first L * floor(n / L) elements, reduced into
L partial results (one per vector lane, no guard: every index is inside the row), and a tail of
fewer than L elements, reduced serially. The row's max is the max of the partials and the tail,
its sum likewise; the exponentials are recomputed where read (in the sum and in the output),
since a per-row buffer of symbolic length would be allocated once per row.

The result is TVM's fast_softmax, exp(x - max) / sum exp(x - max) with the same fast_exp,
summed in another order: equal up to float rounding.
"""

from __future__ import annotations

from typing import Any


def symbolic_softmax_pass(lanes: int) -> Any:
    """Rewrite relax.nn.softmax over a symbolic last axis of float32 into `row_softmax`."""
    import tvm
    from tvm.relax import PyExprMutator, expr_functor

    @expr_functor.mutator
    class _Rewriter(PyExprMutator):  # type: ignore[misc]
        def visit_call_(self, call: Any) -> Any:
            if _symbolic_row_softmax(call):
                return self.builder_.call_te(
                    row_softmax, call.args[0], lanes, primfunc_name_hint="fast_softmax"
                )
            return super().visit_call_(call)

    @tvm.transform.module_pass(opt_level=0, name="SymbolicSoftmax")  # type: ignore[untyped-decorator]
    def _pass(mod: Any, _ctx: Any) -> Any:
        rewriter = _Rewriter(mod)
        for gvar, func in mod.functions_items():
            if isinstance(func, tvm.relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return _pass


def _symbolic_row_softmax(call: Any) -> bool:
    import tvm
    from tvm import tirx

    if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.softmax":
        return False
    info = call.args[0].ty
    shape = getattr(info, "shape", None)
    if str(getattr(info, "dtype", "")) != "float32" or shape is None:
        return False
    dims = list(shape)
    axis = int(call.attrs.axis)
    return axis in (-1, len(dims) - 1) and not isinstance(dims[-1], tirx.IntImm)


def row_softmax(x: Any, lanes: int) -> Any:
    """fast_softmax of `x` over its last axis, reduced in `lanes` partials (see the module)."""
    from tvm import te, tirx, topi

    *lead, n = x.shape
    whole = tirx.floordiv(n, lanes)
    start = whole * lanes

    def reduced(name: str, value: Any, combine: Any, identity: Any) -> Any:
        """Combine value(*row, j) over the row: lane partials, the tail, then the two.

        TVM initializes a reduction inside its first iteration, so neither loop may be empty:
        the lane loop runs at least once and the tail loop L times, guarded, the elements
        outside their range counting as the identity.
        """
        k = te.reduce_axis((0, tirx.max(whole, 1)), name="k")
        partial = te.compute(
            (*lead, lanes),
            lambda *i: combine(
                tirx.if_then_else(k < whole, value(*i[:-1], k * lanes + i[-1]), identity), axis=k
            ),
            name=f"{name}_lanes",
        )
        lane = te.reduce_axis((0, lanes), name="lane")
        of_lanes = te.compute(
            tuple(lead), lambda *i: combine(partial[(*i, lane)], axis=lane), name=f"{name}_of_lanes"
        )
        t = te.reduce_axis((0, lanes), name="t")
        tail = te.compute(
            tuple(lead),
            lambda *i: combine(
                tirx.if_then_else(start + t < n, value(*i, start + t), identity), axis=t
            ),
            name=f"{name}_tail",
        )
        both = tirx.max if combine is te.max else tirx.Add
        return te.compute(tuple(lead), lambda *i: both(of_lanes[i], tail[i]), name=name)

    lowest, zero = tirx.min_value(x.dtype), tirx.const(0, x.dtype)
    peak = reduced("row_max", lambda *i: x[i], te.max, lowest)
    exp = topi.math.fast_exp(te.compute(x.shape, lambda *i: x[i] - peak[i[:-1]], name="shifted"))
    total = reduced("row_sum", lambda *i: exp[i], te.sum, zero)
    return te.compute(x.shape, lambda *i: exp[i] / total[i[:-1]], name="T_softmax_norm")
