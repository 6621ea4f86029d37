"""Float matmuls over weight panels: x @ W[k, n] -> x @ W_p[n/bn, k, bn, 1], packed at compile time.

A register tile of the matmul kernel reads bn columns of W at every step of k. In W's own
[k, n] layout those bn floats sit n floats apart from one step to the next, so every step
touches a new cache line and, for n of 1024 floats or more, a new page, which the hardware
prefetchers do not follow. Packed into panels of bn columns, the tile reads its weights as one
contiguous stream. The rewrite takes `matmul(x, W)` of a constant float32 [k, n] weight and an
activation x of rank 2 or more (its rows may be symbolic) and emits one kernel (`call_te`) over
the panels,
with n zero-padded to whole panels and the padding sliced off after. The bias, GELU and other
elementwise consumers are fused into the kernel by Relax's operator fusion; the panel rule of
`schedules/panels.py` tiles it. The panel's last axis (of size one) gives it the shape of the
integer kernels' packed weights, so both share one weight layout.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from nlpress.targets import relax_match

log = logging.getLogger(__name__)

# The name hint of the kernel (its reduction block is `ACC_BLOCK`, its rows `ROWS_BLOCK`).
KERNEL_NAME = "pmatmul"
ACC_BLOCK = "pmatmul_acc"
ROWS_BLOCK = "pmatmul_rows"


def pack_panels(w: np.ndarray, columns: int) -> np.ndarray:
    """A float [k, n] weight as padded panels p[n/bn, k, bn, 1]: p[j//bn, i, j%bn] = w[i, j]."""
    k, n = w.shape
    padded = np.zeros((k, relax_match.round_up(n, columns)), dtype=w.dtype)
    padded[:, :n] = w
    panels = padded.reshape(k, -1, columns).transpose(1, 0, 2)
    return np.ascontiguousarray(panels[..., None])


def rewrite_float_matmuls(mod: Any, tile: tuple[int, int]) -> Any:
    """Replace every float matmul of a static activation and a constant weight by the panel kernel.

    Args:
        mod: A Relax IRModule, as `from_onnx` imports it.
        tile: (rows, columns) of the target's register tile: the panel width bn is its
            columns; row counts are rounded up to whole tiles of its rows.

    Returns:
        The rewritten module (the same object when nothing matched).

    """
    from tvm import relax

    for gvar, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function):
            continue
        values = relax_match.bound_values(func)
        matched = {var for var, value in values.items() if _weight(value) is not None}
        if matched:
            mod = relax_match.rewrite_bindings(mod, gvar, _replacement(matched, tile))
            log.debug("packed %d float matmuls of %s into panels", len(matched), gvar.name_hint)
    return mod


def panel_matmul_pass(tile: tuple[int, int]) -> Any:
    """`rewrite_float_matmuls` as a TVM module pass, for Relax pipelines."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="NlpressPanelMatmul")  # type: ignore[untyped-decorator]
    def _pass(mod: Any, _ctx: Any) -> Any:
        return rewrite_float_matmuls(mod, tile)

    return _pass


def _weight(value: Any) -> np.ndarray | None:
    """The constant float32 [k, n] weight of `matmul(x, W)` with x static float32, else None."""
    if relax_match.op_of(value) != "relax.matmul":
        return None
    x, w = value.args
    if value.attrs.out_dtype not in (None, "", "float32") or not relax_match.is_const(w):
        return None
    shape = relax_match.shape_of(x)
    if shape is None or len(shape) < 2 or relax_match.dtype_of(x) != "float32":
        return None
    array = w.value.numpy()
    depth = getattr(shape[-1], "value", None)
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != depth:
        return None
    return np.asarray(array)


def _replacement(matched: set[Any], tile: tuple[int, int]) -> relax_match.Replacement:
    from tvm import relax

    rows, columns = tile

    def replace(bb: Any, binding: Any, visit: Any) -> Any:
        weight = _weight(binding.value) if binding.var in matched else None
        if weight is None:
            return None
        x = visit(binding.value.args[0])
        panels = relax.const(pack_panels(weight, columns), "float32")
        kernel = bb.call_te(_te_panel_matmul, x, panels, rows=rows, primfunc_name_hint=KERNEL_NAME)
        out = bb.emit(kernel)
        n = weight.shape[1]
        if n % columns:
            axis = relax_match.ndim_of(x) - 1
            out = bb.emit(relax.op.strided_slice(out, axes=[axis], begin=[0], end=[n]))
        return out

    return replace


# Rows of an integer tile over a symbolic row count at most: a sentence's rows are padded to
# whole tiles, and a 4-row tile computes at most 3 of them in vain, an 8-row one up to 7.
SYMBOLIC_INT8_ROWS = 4


def int8_tile_rows(count: Any, rows: int) -> int:
    """The rows of an integer tile over `count` rows: `rows`, capped for a symbolic count."""
    from tvm import tirx

    return rows if isinstance(count, (int, tirx.IntImm)) else min(rows, SYMBOLIC_INT8_ROWS)


def whole_tiles(a: Any, rows: int) -> tuple[Any, Any] | None:
    """The rows of a[..., S, k] rounded up to whole tiles of `rows`, read with row S-1 repeated.

    Returns T, S rounded up to a multiple of `rows`, and a reader r(..., t, k) =
    a[..., min(t, S-1), k]; None when `rows` is 1, or S is static and a multiple of `rows` or
    fewer. A kernel over T rows needs no row guard inside its reduction: the rows past S
    compute copies that the result drops, and the reads never leave `a`.
    """
    from tvm import tirx

    count = a.shape[-2]
    static = isinstance(count, tirx.IntImm)
    if rows <= 1 or (static and (int(count) % rows == 0 or int(count) < rows)):
        return None

    def read(*index: Any) -> Any:
        *head, row, k = index
        return a[(*head, tirx.min(row, count - 1), k)]

    return (count + rows - 1) // rows * rows, read


def _te_panel_matmul(a: Any, w: Any, *, rows: int) -> Any:
    """C[..., j] = sum_k a[..., k] * w[j // bn, k, j % bn, 0]; the result has whole panels.

    The sums run over the rows rounded up to whole tiles (`whole_tiles`); the first rows are
    the result.
    """
    from tvm import te

    *lead, depth = a.shape
    bn = int(w.shape[2])
    k = te.reduce_axis((0, depth), name="k")
    tiles = whole_tiles(a, rows)
    count, read = tiles if tiles else (lead[-1], lambda *index: a[index])

    def product(*index: Any) -> Any:
        *head, j = index
        return te.sum(read(*head, k) * w[j // bn, k, j % bn, 0], axis=k)

    acc = te.compute((*lead[:-1], count, w.shape[0] * bn), product, name=ACC_BLOCK)
    if tiles is None:
        return acc
    return te.compute((*lead, w.shape[0] * bn), lambda *index: acc[index], name=ROWS_BLOCK)
