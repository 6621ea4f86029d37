"""Float matmuls over weight panels: x @ W[k, n] -> x @ W_p[n/bn, k, bn, 1], packed at compile time.

A register tile of the matmul kernel reads bn columns of W at every step of k. In W's own
[k, n] layout those bn floats sit n floats apart from one step to the next, so every step
touches a new cache line and, for n of 1024 floats or more, a new page, which the hardware
prefetchers do not follow. Packed into panels of bn columns, the tile reads its weights as one
contiguous stream. The rewrite takes `matmul(x, W)` of a constant float32 [k, n] weight and an
activation x of rank 2 or more (its rows may be symbolic) and emits one kernel (`call_te`) over
the panels, with n zero-padded to whole panels and the padding sliced off after. The bias,
GELU and other elementwise consumers are fused into the kernel by Relax's operator fusion; the
panel rule of `schedules/panels.py` tiles it over a symbolic row count, the Matmul rule over a
static one. The panel's last axis (of size one) gives it the shape of the integer kernels'
packed weights, so both share one weight layout.

A weight-only quantized matmul, `matmul(x, dequantize(W_q, s))` with x float32, a constant int8
W_q [k, n], a per-column (or per-tensor) scale s and zero zero-points, keeps W_q packed as int8
panels: the kernel widens each panel vector to float as it reads it and scales the sums,
C[..., j] = s[j] * sum_k x[..., k] * W_q[k, j], which is x @ (W_q * s) up to float rounding (the
scale of a column is common to its whole sum). The library holds a quarter of the weight bytes.

A group-wise weight (`blocked.py`: W[i, j] = u[i, j] s[i // g, j] - o[i // g, j], groups of g
along k) keeps its codes u as panels too, two rows of k to a byte (low nibble first) when they
fit in 4 bits, with s and o packed as panels p[n/bn, k/g, bn]: the kernel unpacks a panel's
codes into a float panel, u[k, j] s[k/g, j] - o[k/g, j] (its `DEQUANTIZE_BLOCK`), and sums
over that as the float kernel does; the panel rule unpacks each panel once, before its row
tiles, into a buffer they all read, or in the tile when there is one (`schedules/panels.py`).
The library holds an eighth (4-bit) or a quarter (8-bit) of the weight bytes, plus two floats
per group and column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from nlpress.targets import blocked, quantized, relax_match
from nlpress.targets.blocked import nibble, pack_nibbles

log = logging.getLogger(__name__)

# The name hint of the kernel (its reduction block is `ACC_BLOCK`, its rows `ROWS_BLOCK`; a
# group-wise weight's panels are dequantized by `DEQUANTIZE_BLOCK`).
KERNEL_NAME = "pmatmul"
ACC_BLOCK = "pmatmul_acc"
ROWS_BLOCK = "pmatmul_rows"
DEQUANTIZE_BLOCK = "pmatmul_dequantize"


def pack_panels(w: np.ndarray, columns: int) -> np.ndarray:
    """A float [k, n] weight as padded panels p[n/bn, k, bn, 1]: p[j//bn, i, j%bn] = w[i, j]."""
    k, n = w.shape
    padded = np.zeros((k, relax_match.round_up(n, columns)), dtype=w.dtype)
    padded[:, :n] = w
    panels = padded.reshape(k, -1, columns).transpose(1, 0, 2)
    return np.ascontiguousarray(panels[..., None])


def rewrite_float_matmuls(mod: Any, tile: tuple[int, int], grouped_only: bool = False) -> Any:
    """Replace every float matmul of a static activation and a constant weight by the panel kernel.

    Args:
        mod: A Relax IRModule, as `from_onnx` imports it.
        tile: (rows, columns) of the target's register tile: the panel width bn is its
            columns; row counts are rounded up to whole tiles of its rows.
        grouped_only: Replace only matmuls over group-wise weights (`blocked.py`).

    Returns:
        The rewritten module (the same object when nothing matched).

    """
    from tvm import relax

    for gvar, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function):
            continue
        values = relax_match.bound_values(func)
        matched = {
            var: weight
            for var, value in values.items()
            if (weight := _weight(value, values, mod)) and (weight.groups or not grouped_only)
        }
        if matched:
            mod = relax_match.rewrite_bindings(mod, gvar, _replacement(matched, tile))
            log.debug("packed %d float matmuls of %s into panels", len(matched), gvar.name_hint)
    return mod


def panel_matmul_pass(tile: tuple[int, int], grouped_only: bool = False) -> Any:
    """`rewrite_float_matmuls` as a TVM module pass, for Relax pipelines."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="NlpressPanelMatmul")  # type: ignore[untyped-decorator]
    def _pass(mod: Any, _ctx: Any) -> Any:
        return rewrite_float_matmuls(mod, tile, grouped_only)

    return _pass


@dataclass(frozen=True)
class _Weight:
    """The [k, n] weight of a matmul: float32, int8 scaled per column, or group-wise codes."""

    values: np.ndarray
    scale: np.ndarray | None = None
    groups: blocked.Grouped | None = None


def _weight(value: Any, values: dict[Any, Any], mod: Any) -> _Weight | None:
    """The constant weight of `matmul(x, W)` with x float32 of rank 2 or more, else None.

    W is a float32 constant, or the dequantization of a weight-only int8 or group-wise one
    (module doc).
    """
    if relax_match.op_of(value) != "relax.matmul":
        return None
    x, w = value.args
    shape = relax_match.shape_of(x)
    if value.attrs.out_dtype not in (None, "", "float32") or shape is None or len(shape) < 2:
        return None
    if relax_match.dtype_of(x) != "float32":
        return None
    weight = _constant_weight(w, values, mod)
    depth = getattr(shape[-1], "value", None)
    if weight is None or weight.values.ndim != 2 or weight.values.shape[0] != depth:
        return None
    return weight


def _constant_weight(w: Any, values: dict[Any, Any], mod: Any) -> _Weight | None:
    groups = blocked.grouped_weight(w, values, mod)
    if groups is not None:
        along_k = groups.axis == 0 and groups.codes.ndim == 2
        return _Weight(groups.codes, groups=groups) if along_k else None
    if relax_match.is_const(w):
        array = np.asarray(w.value.numpy())
        return _Weight(array) if array.dtype == np.float32 else None
    dequantize = relax_match.call_of(w, "relax.dequantize", values)
    if dequantize is None or str(dequantize.attrs.out_dtype) != "float32":
        return None
    int8 = quantized.constant_int8_weight(dequantize)
    return None if int8 is None else _Weight(int8.q, int8.scale)


def _replacement(matched: dict[Any, _Weight], tile: tuple[int, int]) -> relax_match.Replacement:
    from tvm import relax

    rows, columns = tile

    def replace(bb: Any, binding: Any, visit: Any) -> Any:
        weight = matched.get(binding.var)
        if weight is None:
            return None
        x = visit(binding.value.args[0])
        panels = pack_panels(weight.values, columns)
        if weight.groups is not None:
            out = bb.emit(_grouped_kernel(bb, x, panels, weight.groups, rows, columns))
        else:
            args = [x, relax.const(panels, str(panels.dtype))]
            if weight.scale is not None:
                padded = np.zeros(panels.shape[0] * columns, dtype=np.float32)
                padded[: weight.scale.size] = weight.scale
                args.append(relax.const(padded, "float32"))
            kernel = bb.call_te(_te_panel_matmul, *args, rows=rows, primfunc_name_hint=KERNEL_NAME)
            out = bb.emit(kernel)
        n = weight.values.shape[1]
        if n % columns:
            axis = relax_match.ndim_of(x) - 1
            out = bb.emit(relax.op.strided_slice(out, axes=[axis], begin=[0], end=[n]))
        return out

    return replace


def _grouped_kernel(
    bb: Any, x: Any, panels: np.ndarray, groups: blocked.Grouped, rows: int, columns: int
) -> Any:
    """The panel kernel over a group-wise weight's codes, scales and offsets (module doc)."""
    from tvm import relax

    codes = pack_nibbles(panels) if groups.bits == 4 else panels
    scale, offset = (pack_panels(p, columns)[..., 0] for p in (groups.scale, groups.offset))
    args = [relax.const(a) for a in (codes, scale, offset)]
    return bb.call_te(
        _te_panel_matmul,
        x,
        *args,
        rows=rows,
        group=groups.group,
        nibbles=groups.bits == 4,
        primfunc_name_hint=KERNEL_NAME,
    )


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


def _te_panel_matmul(
    a: Any,
    w: Any,
    scale: Any = None,
    offset: Any = None,
    *,
    rows: int,
    group: int = 0,
    nibbles: bool = False,
) -> Any:
    """C[..., j] = sum_k a[..., k] * w[j // bn, k, j % bn, 0]; the result has whole panels.

    An int8 `w` is widened to float as it is read, and the sums are multiplied by `scale[j]`.
    With a `group`, `w` holds codes (two rows of k to a byte with `nibbles`), dequantized
    into float panels first (`_te_dequantize`).
    The sums run over the rows rounded up to whole tiles (`whole_tiles`); the first rows are
    the result.
    """
    from tvm import te

    *lead, depth = a.shape
    bn = int(w.shape[2])
    k = te.reduce_axis((0, depth), name="k")
    tiles = whole_tiles(a, rows)
    count, read = tiles if tiles else (lead[-1], lambda *index: a[index])

    panel = _te_dequantize(w, scale, offset, depth, group, nibbles) if group else w

    def product(*index: Any) -> Any:
        *head, j = index
        return te.sum(read(*head, k) * panel[j // bn, k, j % bn, 0].astype("float32"), axis=k)

    acc = te.compute((*lead[:-1], count, w.shape[0] * bn), product, name=ACC_BLOCK)
    if tiles is not None:
        acc = te.compute((*lead, w.shape[0] * bn), lambda *index: acc[index], name=ROWS_BLOCK)
    if scale is None or group:
        return acc
    return te.compute(acc.shape, lambda *index: acc[index] * scale[index[-1]], name="scaled")


def _te_dequantize(
    codes: Any, scale: Any, offset: Any, depth: Any, group: int, nibbles: bool
) -> Any:
    """Float panels p[P, i, c, 0] = code[P, i, c] * scale[P, i // group, c] - offset[same]."""
    from tvm import te

    def value(panel: Any, i: Any, column: Any, unit: Any) -> Any:
        byte = codes[panel, i // 2 if nibbles else i, column, unit]
        code = nibble(byte, i) if nibbles else byte
        at = (panel, i // group, column)
        return code.astype("float32") * scale[at] - offset[at]

    shape = (codes.shape[0], depth, codes.shape[2], 1)
    return te.compute(shape, value, name=DEQUANTIZE_BLOCK)
