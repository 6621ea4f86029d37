"""Matching Relax functions: bindings, the values variables are bound to, types and constants.

Shared by the Relax rewrites of the CPU lowering (`quantized.py`, `panels.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


def bindings(func: Any) -> Iterator[Any]:
    """Every binding of the function's body, block by block."""
    from tvm import relax

    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return
    for block in body.blocks:
        yield from block.bindings


def bound_values(func: Any) -> dict[Any, Any]:
    """Var -> the value it is bound to, for every VarBinding of `func`."""
    from tvm import relax

    return {b.var: b.value for b in bindings(func) if isinstance(b, relax.VarBinding)}


def use_counts(func: Any) -> dict[Any, int]:
    """How many times each Var is used in the function's body."""
    from tvm import relax

    counts: dict[Any, int] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def call_of(expr: Any, name: str, values: dict[Any, Any]) -> Any:
    """The Call of operator `name` that `expr` is or is bound to, else None."""
    from tvm import relax

    if isinstance(expr, relax.Var) and expr in values:
        expr = values[expr]
    return expr if op_of(expr) == name else None


def op_of(expr: Any) -> str | None:
    """The name of the operator `expr` calls (e.g. "relax.matmul"), None if not an op call."""
    import tvm
    from tvm import relax

    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def is_const(expr: Any) -> bool:
    """Whether `expr` is a Relax constant."""
    import tvm

    return isinstance(expr, tvm.ir.GenericConst)


def dtype_of(expr: Any) -> str:
    """The element dtype of a tensor expression ("" when unknown)."""
    dtype = getattr(expr.ty, "dtype", None)
    return str(getattr(dtype, "dtype", dtype or ""))


def ndim_of(expr: Any) -> int:
    """The rank of a tensor expression (-1 when unknown)."""
    return int(getattr(expr.ty, "ndim", -1))


def shape_of(expr: Any) -> list[Any] | None:
    """The dims of a tensor expression (ints or symbolic PrimExprs), None when unknown."""
    shape = getattr(expr.ty, "shape", None)
    return list(shape.values) if shape is not None and hasattr(shape, "values") else None


def static_shape_of(expr: Any) -> list[int] | None:
    """The dims of a tensor expression when all are constants, else None."""
    shape = shape_of(expr)
    if shape is None or not all(hasattr(d, "value") for d in shape):
        return None
    return [int(d.value) for d in shape]


def is_scalar(expr: Any) -> bool:
    """Whether a tensor expression holds one element."""
    shape = shape_of(expr)
    return shape is not None and all(int(getattr(d, "value", 0)) == 1 for d in shape)


def round_up(value: int, multiple: int) -> int:
    """`value` rounded up to a multiple of `multiple`."""
    return -(-value // multiple) * multiple


def padded(vector: np.ndarray, size: int) -> np.ndarray:
    """`vector` zero-padded to `size` elements."""
    out = np.zeros(size, dtype=vector.dtype)
    out[: vector.size] = vector
    return out


# A rewrite of one binding: (block builder, binding, visit) -> the new value's var, or None.
Replacement = Callable[[Any, Any, Callable[[Any], Any]], Any]


def rewrite_bindings(mod: Any, gvar: Any, replacement: Replacement) -> Any:
    """Re-emit function `gvar` of `mod`, each binding replaced where `replacement` gives a var.

    `replacement` emits what replaces the binding with the block builder and returns its var
    (None: keep the binding); `visit` maps an expression of the old function into the new one.
    """
    return _make_rewriter()(mod, replacement).rewrite(gvar)


def _make_rewriter() -> type:
    from tvm import relax

    @relax.expr_functor.mutator
    class BindingRewriter(relax.PyExprMutator):  # type: ignore[misc]
        """Re-emits a function, replacing the bindings that `replacement` rewrites."""

        def __init__(self, mod: Any, replacement: Replacement) -> None:
            super().__init__(mod)
            self.mod_ = mod
            self.replacement = replacement

        def rewrite(self, gvar: Any) -> Any:
            func = self.visit_expr(self.mod_[gvar])
            self.builder_.update_func(gvar, func)
            return self.builder_.get()

        def visit_var_binding_(self, binding: Any) -> None:
            new = self.replacement(self.builder_, binding, self.visit_expr)
            if new is None:
                super().visit_var_binding_(binding)
                return
            if not isinstance(binding.var, relax.DataflowVar):  # an output of the block
                new = self.builder_.emit_output(new)
            self.set_var_remap(binding.var, new)

    return BindingRewriter
