"""QDQ MatMul -> int matmul: dq(x_q) @ dq(W_q) + b -> (x_q @ W_q - zp_x colsum(W_q)) s_x s_w + b.

The Relax rewrite runs right after `from_onnx`, before legalization, for every target. It takes
a `matmul` whose left operand is `dequantize(x_q, s_x, zp_x)` of an activation in the QDQ format's
`ACTIVATION` scheme and whose right operand is `dequantize(W_q, s_w, 0, axis=1)` of a constant
weight in its `WEIGHT` scheme (`ir.qdq`), and an optional float bias added to its result. The
quantize of x stays: it is real work (float -> uint8). What replaces the float matmul:

- on CPU targets, one kernel (`call_te`) that accumulates uint8 x int8 products in int32 over
  a weight repacked at compile time into blocks of the target's kernel family,
  `W_p[n/bn, k/bk, bn, bk]` (16 x 4 for dot-product instructions, 8 x 2 for AVX2's vpmaddwd
  and NEON's smull; zero-padded to whole blocks), then applies the zero-point correction with
  the precomputed column sums, the scales and the bias in its epilogue. The integer schedule
  rule (`schedules/int8.py`) tensorizes its inner block with the family's instruction
  (`schedules/int8_intrinsics.py`);
- on CUDA, the same kernel over the transposed weight W^T [n, k] with the activations
  shifted by 128 into int8 (and the zero point with them), whose runs of four k the rule of
  `schedules/int8_gpu.py` feeds to __dp4a. (A portable form in Relax ops, `packed=False`,
  `matmul(x_q, W_q, out_dtype="int32")` and elementwise ops, remains for any target.)

The weights are stored as int8 constants (plus an int32 column sum and a float scale per
column), so the library holds a quarter of the float weight bytes. Two companions: a Gather of
a dequantized constant table (an embedding) gathers int8 rows and dequantizes only those, so
the table stays int8 too (a group-wise table of `blocked.py`, or one whose codes fit in 4
bits, is gathered by `blocked.gather`, its codes two to a byte); and DynamicQuantizeLinear's
max(x) and min(x) over a whole tensor become two row reductions, which the row-reduction
schedule takes. Anything else (int8 activations, per-channel activation scales, nonzero weight
zero-points, batched matmuls of two activations) is left in float.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from nlpress.ir.qdq import ACTIVATION, TABLE, WEIGHT
from nlpress.targets import blocked, relax_match

log = logging.getLogger(__name__)

# The packed weight's block when none is given: 16 output columns x 4 reduction rows.
BLOCK = (16, 4)
# The transposed (GPU) weight pads its reduction rows to a multiple of this.
BLOCK_K = 4
# The name hint of the CPU kernel (its reduction block is `ACC_BLOCK`).
KERNEL_NAME = "qmatmul"
ACC_BLOCK = "qmatmul_acc"


@dataclass(frozen=True)
class _Weight:
    """The constant quantized weight of a QDQ MatMul, in numpy."""

    q: np.ndarray  # int8 [k, n]
    scale: np.ndarray  # float32 [n]


@dataclass(frozen=True)
class _Match:
    """One QDQ MatMul (and the bias Add it absorbs) found in the original function."""

    x_q: Any  # the uint8 activation (a Relax expression of the original function)
    x_scale: Any
    x_zero_point: Any
    weight: _Weight
    bias: np.ndarray | None  # float32 [n]
    output: Any  # the Relax Var whose value the integer matmul replaces


@dataclass(frozen=True)
class _Plan:
    """What to rewrite in one function: QDQ MatMuls, full-range reductions, QDQ gathers."""

    matmuls: list[_Match]
    ranges: set[Any]
    gathers: dict[Any, tuple[Any, Any]]  # var -> (dequantize call or Grouped table, indices)

    def __bool__(self) -> bool:
        return bool(self.matmuls or self.ranges or self.gathers)


def pack_weight(w_q: np.ndarray, block: tuple[int, int] = BLOCK) -> np.ndarray:
    """Repack an int8 [k, n] weight into zero-padded blocks [n/bn, k/bk, bn, bk].

    `packed[j // bn, i // bk, j % bn, i % bk] == w_q[i, j]`; padding rows and columns are zero.
    """
    bn, bk = block
    k, n = w_q.shape
    kp, np_ = relax_match.round_up(k, bk), relax_match.round_up(n, bn)
    padded = np.zeros((kp, np_), dtype=np.int8)
    padded[:k, :n] = w_q
    blocks = padded.reshape(kp // bk, bk, np_ // bn, bn)
    return np.ascontiguousarray(blocks.transpose(2, 0, 3, 1))


def rewrite_qdq_matmuls(
    mod: Any,
    packed: bool = True,
    activation_offset: int = 0,
    transposed: bool = False,
    block: tuple[int, int] = BLOCK,
    activation_dtype: str = "uint8",
    rows: int = 1,
) -> Any:
    """Replace every QDQ MatMul of the module's Relax functions by integer arithmetic.

    Args:
        mod: A Relax IRModule, as `from_onnx` imports it.
        packed: Emit the CPU kernel over VNNI-packed weights (True), or Relax ops that any
            target legalizes (False; CUDA).
        activation_offset: Packed kernels only: subtract it from each uint8 activation in the
            products and from the zero point in the correction (exact either way); 128 moves
            the activations into int8 for ARM's sdot (and CUDA's signed __dp4a).
        transposed: Emit the kernel over the transposed weight W^T [n, k] instead (k padded
            to a multiple of 4), whose runs of four k feed CUDA's __dp4a; overrides `packed`.
        block: (columns, reduction rows) of the packed weight's blocks.
        activation_dtype: Packed kernels only: the dtype the kernel reads its uint8
            activations in ("int16": zero-extended where they are quantized).
        rows: Packed kernels only: the register tile's rows; the kernel's row count is
            rounded up to whole tiles of it (`panels.whole_tiles`).

    Returns:
        The rewritten module (the same object when nothing matched).

    """
    from tvm import relax

    plans = {
        gvar: _Plan(_find_matches(func), _full_ranges(func), _find_gathers(func, mod))
        for gvar, func in mod.functions_items()
        if isinstance(func, relax.Function)
    }
    plans = {gvar: plan for gvar, plan in plans.items() if plan}
    if not plans:
        return mod
    settings = _Settings(packed, activation_offset, transposed, block, activation_dtype, rows)
    for gvar, plan in plans.items():
        mod = relax_match.rewrite_bindings(mod, gvar, _replacement(plan, settings))
    count = sum(len(plan.matmuls) for plan in plans.values())
    log.debug("rewrote %d QDQ MatMuls to integer matmuls (packed=%s)", count, packed)
    return relax.transform.DeadCodeElimination()(mod)


def qdq_matmul_pass(
    packed: bool = True,
    activation_offset: int = 0,
    transposed: bool = False,
    block: tuple[int, int] = BLOCK,
    activation_dtype: str = "uint8",
    rows: int = 1,
) -> Any:
    """`rewrite_qdq_matmuls` as a TVM module pass, for Relax pipelines."""
    import tvm

    settings = (packed, activation_offset, transposed, block, activation_dtype, rows)

    @tvm.transform.module_pass(opt_level=0, name="NlpressQdqMatmul")  # type: ignore[untyped-decorator]
    def _pass(mod: Any, _ctx: Any) -> Any:
        return rewrite_qdq_matmuls(mod, *settings)

    return _pass


# ---------------------------------------------------------------------------------------------
# Matching


def _find_matches(func: Any) -> list[_Match]:
    """The QDQ MatMuls of `func`, each with the bias Add it can absorb."""
    values = relax_match.bound_values(func)
    uses = relax_match.use_counts(func)
    matches: dict[Any, _Match] = {}
    for var, value in values.items():
        found = _match_matmul(value, values)
        if found is not None:
            matches[var] = _Match(*found, bias=None, output=var)
    for var, value in values.items():
        bias = _bias_of(value, matches, uses)
        if bias is not None:
            matmul_var, vector = bias
            old = matches.pop(matmul_var)
            matches[var] = _Match(
                old.x_q, old.x_scale, old.x_zero_point, old.weight, vector, output=var
            )
    return list(matches.values())


def _full_ranges(func: Any) -> set[Any]:
    """The vars bound to max(x) or min(x) over every axis of an x of rank 2 or more.

    DynamicQuantizeLinear's range: a reduction to one scalar runs on one thread, unvectorized;
    as a reduction of each row, then of the row results, it takes the row-reduction schedule.
    """
    found = set()
    for binding in relax_match.bindings(func):
        value = binding.value
        if (
            relax_match.op_of(value) not in ("relax.max", "relax.min")
            or value.attrs.axis is not None
        ):
            continue
        if relax_match.ndim_of(value.args[0]) >= 2 and not value.attrs.keepdims:
            found.add(binding.var)
    return found


def _find_gathers(func: Any, mod: Any) -> dict[Any, tuple[Any, Any]]:
    """Gathers of rows of a dequantized constant table (an embedding): var -> (table, ids).

    The table is the `relax.dequantize` call of an int8 or uint8 table, or a
    `blocked.Grouped` one: a group-wise table (`blocked.grouped_weight`), or a dequantized
    one whose codes fit in 4 bits. They gather integer rows and dequantize only those, so the
    table stays 4- or 8-bit in the library (a dequantize of a constant would be folded into a
    float table).
    """
    values = relax_match.bound_values(func)
    found = {}
    for var, value in values.items():
        take = relax_match.call_of(value, "relax.take", values)
        if take is None or take.attrs.axis is None or int(take.attrs.axis) != 0:
            continue
        table = _gathered_table(take.args[0], values, mod)
        if table is not None:
            found[var] = (table, take.args[1])
    return found


def _gathered_table(expr: Any, values: dict[Any, Any], mod: Any) -> Any:
    """The table `_find_gathers` gathers from when `expr` is a dequantized 2-D constant."""
    groups = blocked.grouped_weight(expr, values, mod)
    if groups is not None:
        return groups if groups.codes.ndim == 2 else None
    dequantize = relax_match.call_of(expr, "relax.dequantize", values)
    if dequantize is None or not all(relax_match.is_const(a) for a in dequantize.args):
        return None
    table = dequantize.args[0]
    if (
        relax_match.dtype_of(table) not in (TABLE.name, ACTIVATION.name)
        or relax_match.ndim_of(table) != 2
        or str(dequantize.attrs.out_dtype) != "float32"
    ):
        return None
    q, scale, zero_point = (a.value.numpy() for a in dequantize.args)
    groups = blocked.per_axis(q, scale, zero_point, int(dequantize.attrs.axis))
    return groups if groups is not None and groups.bits == 4 else dequantize


def _match_matmul(value: Any, values: dict[Any, Any]) -> tuple[Any, Any, Any, _Weight] | None:
    """(x_q, s_x, zp_x, weight) when `value` is matmul(dequantize(x_q), dequantize(W_q))."""
    matmul = relax_match.call_of(value, "relax.matmul", values)
    if matmul is None or matmul.attrs.out_dtype not in (None, "", "float32"):
        return None
    left = relax_match.call_of(matmul.args[0], "relax.dequantize", values)
    right = relax_match.call_of(matmul.args[1], "relax.dequantize", values)
    if left is None or right is None:
        return None
    activation = _activation(left)
    weight = constant_int8_weight(right)
    if activation is None or weight is None:
        return None
    return (*activation, weight)


def _activation(dequantize: Any) -> tuple[Any, Any, Any] | None:
    """(x_q, s_x, zp_x) of a per-tensor uint8 dequantize with a float32 result, else None."""
    x_q, scale, zero_point = dequantize.args
    float_result = str(dequantize.attrs.out_dtype) == "float32"
    if relax_match.dtype_of(x_q) != ACTIVATION.name or not float_result:
        return None
    if (
        relax_match.ndim_of(x_q) not in (2, 3)
        or relax_match.dtype_of(scale) != "float32"
        or relax_match.dtype_of(zero_point) != ACTIVATION.name
    ):
        return None
    if not (relax_match.is_scalar(scale) and relax_match.is_scalar(zero_point)):
        return None
    return x_q, scale, zero_point


def constant_int8_weight(dequantize: Any) -> _Weight | None:
    """The constant int8 [k, n] weight with per-column or per-tensor scale and zero zero-point."""
    w_q, scale, zero_point = dequantize.args
    if not all(relax_match.is_const(a) for a in (w_q, scale, zero_point)):
        return None
    q, s, zp = (a.value.numpy() for a in (w_q, scale, zero_point))
    if q.dtype != WEIGHT.dtype or q.ndim != 2 or s.dtype != np.float32 or np.any(zp != 0):
        return None
    n = q.shape[1]
    if s.size == 1:
        s = np.full(n, s.reshape(()), dtype=np.float32)
    elif s.shape != (n,) or int(dequantize.attrs.axis) not in (WEIGHT.axis, -1):
        return None
    return _Weight(q, s.astype(np.float32))


def _bias_of(
    value: Any, matches: dict[Any, _Match], uses: dict[Any, int]
) -> tuple[Any, np.ndarray] | None:
    """(matmul var, bias [n]) when `value` adds a constant float bias to a matched matmul."""
    if relax_match.op_of(value) != "relax.add":
        return None
    for mm, other in (value.args, value.args[::-1]):
        if mm in matches and uses.get(mm, 0) == 1 and relax_match.is_const(other):
            bias = other.value.numpy()
            n = matches[mm].weight.q.shape[1]
            fits = (
                bias.size == n and bias.shape[-1:] == (n,) and bias.ndim <= relax_match.ndim_of(mm)
            )
            if bias.dtype == np.float32 and fits:
                return mm, bias.reshape(n)
    return None


# ---------------------------------------------------------------------------------------------
# Rewriting


@dataclass(frozen=True)
class _Settings:
    """How the rewrite emits integer matmuls (see `rewrite_qdq_matmuls`)."""

    packed: bool
    offset: int
    transposed: bool
    block: tuple[int, int]
    activation_dtype: str
    rows: int


def _replacement(plan: _Plan, settings: _Settings) -> relax_match.Replacement:
    """The binding rewrite of one function's plan."""
    from tvm import relax

    matches = {m.output: m for m in plan.matmuls}

    def replace(bb: Any, binding: Any, visit: Any) -> Any:
        if binding.var in plan.ranges:
            return _emit_range(bb, binding, visit)
        static = _static_shape_of(binding.value)
        if static is not None:  # frees the dequantized tables whose shape was asked
            return bb.emit(relax.ShapeExpr(static))
        if binding.var in plan.gathers:
            return _emit_gather(bb, *plan.gathers[binding.var], visit)
        match = matches.get(binding.var)
        if match is None:
            return None
        if settings.packed or settings.transposed:
            return _emit_packed(bb, match, visit, settings)
        return _emit_relax_ops(bb, match, visit)

    return replace


def _static_shape_of(value: Any) -> list[int] | None:
    """The dims of `shape_of(x)` when x's shape is static, else None."""
    if relax_match.op_of(value) != "relax.shape_of":
        return None
    return relax_match.static_shape_of(value.args[0])


def _emit_gather(bb: Any, dequantize: Any, indices: Any, visit: Any) -> Any:
    """take(dequantize(T_q, s, zp), ids) as (take(T_q, ids) - zp) * s, per row or column.

    A `blocked.Grouped` table instead is gathered by `blocked.gather`.
    """
    from tvm import relax

    ids = visit(indices)
    if isinstance(dequantize, blocked.Grouped):
        return blocked.gather(bb, dequantize, ids)
    op = relax.op
    table, scale, zero_point = dequantize.args
    rows = op.astype(op.take(table, ids, axis=0), "float32")
    per_row = (
        relax_match.ndim_of(scale) == 1
        and int(dequantize.attrs.axis) == 0
        and not relax_match.is_scalar(scale)
    )
    if per_row:  # one scale per table row: gather it with the row
        scale = op.expand_dims(op.take(scale, ids, axis=0), -1)
        zero_point = op.expand_dims(op.take(zero_point, ids, axis=0), -1)
    centered = op.subtract(rows, op.astype(zero_point, "float32"))
    return bb.emit(op.multiply(centered, scale))


def _emit_range(bb: Any, binding: Any, visit: Any) -> Any:
    """max(x) as max(max(x, axis=-1)) (min alike): two row reductions, the second short."""
    from tvm import relax

    reduce = relax.op.max if binding.value.op.name == "relax.max" else relax.op.min
    rows = bb.emit(reduce(visit(binding.value.args[0]), axis=[-1]))
    if relax_match.ndim_of(rows) > 1:
        rows = bb.emit(relax.op.reshape(rows, (-1,)))
    # As one row of a [1, rows] tensor, the last stage is a row reduction too.
    last = bb.emit(reduce(relax.op.reshape(rows, (1, -1)), axis=[-1]))
    return bb.emit(relax.op.reshape(last, ()))


def _scalar(bb: Any, expr: Any) -> Any:
    """A 0-d view of a one-element tensor."""
    from tvm import relax

    if relax_match.ndim_of(expr) == 0:
        return expr
    return bb.emit(relax.op.reshape(expr, ()))


def _emit_packed(bb: Any, match: _Match, visit: Any, settings: _Settings) -> Any:
    """One kernel over the block-packed (CPU) or transposed (GPU) weight; returns the output."""
    from tvm import relax

    x_q = visit(match.x_q)
    if settings.activation_dtype != "uint8":
        x_q = bb.emit(relax.op.astype(x_q, settings.activation_dtype))
    q = match.weight.q
    k, n = q.shape
    transposed = settings.transposed
    bn, bk = (1, BLOCK_K) if transposed else settings.block
    kp, np_ = relax_match.round_up(k, bk), relax_match.round_up(n, bn)
    if kp != k:
        pad = [0, 0] * (relax_match.ndim_of(x_q) - 1) + [0, kp - k]
        x_q = bb.emit(relax.op.nn.pad(x_q, pad, pad_value=0.0))
    colsum = relax_match.padded(q.astype(np.int32).sum(axis=0, dtype=np.int32), np_)
    args = [
        x_q,
        relax.const(_transpose_weight(q) if transposed else pack_weight(q, (bn, bk)), "int8"),
        relax.const(colsum, "int32"),
        _scalar(bb, visit(match.x_zero_point)),
        _scalar(bb, visit(match.x_scale)),
        relax.const(relax_match.padded(match.weight.scale, np_), "float32"),
    ]
    if match.bias is not None:
        bias = relax_match.padded(match.bias.astype(np.float32), np_)
        args.append(relax.const(bias, "float32"))
    kwargs = {
        "offset": settings.offset,
        "transposed": transposed,
        "rows": settings.rows,
        "primfunc_name_hint": KERNEL_NAME,
    }
    out = bb.emit(bb.call_te(_te_qmatmul, *args, **kwargs))
    if np_ != n:
        out = bb.emit(
            relax.op.strided_slice(out, axes=[relax_match.ndim_of(x_q) - 1], begin=[0], end=[n])
        )
    return out


def _transpose_weight(w_q: np.ndarray) -> np.ndarray:
    """W^T [n, k] of an int8 [k, n] weight, k zero-padded to a multiple of 4."""
    k, n = w_q.shape
    out = np.zeros((n, relax_match.round_up(k, BLOCK_K)), dtype=np.int8)
    out[:, :k] = w_q.T
    return out


def _te_qmatmul(
    a: Any,
    w: Any,
    colsum: Any,
    zero_point: Any,
    x_scale: Any,
    w_scale: Any,
    bias: Any = None,
    *,
    offset: int = 0,
    transposed: bool = False,
    rows: int = 1,
) -> Any:
    """The kernel: int32 sums of uint8 x int8 products over packed W, then the float epilogue.

    `a` is [..., k] and `w` is [n/bn, k/bk, bn, bk] (k a multiple of bk); the result is
    [..., n]. With an `offset`, the products take `a - offset` and the correction
    `zero_point - offset`. A `transposed` weight is W^T [n, k] (n any). The sums run over the
    rows rounded up to whole tiles of `rows` (`panels.whole_tiles`); the epilogue reads the
    first rows.
    """
    from tvm import te

    from nlpress.targets.panels import int8_tile_rows, whole_tiles

    *lead, depth = a.shape
    tiles = None if transposed else whole_tiles(a, int8_tile_rows(a.shape[-2], rows))
    count, read = tiles if tiles else (lead[-1], lambda *index: a[index])
    bn, bk = (1, 1) if transposed else (int(w.shape[2]), int(w.shape[3]))
    cols = w.shape[0] * bn
    k = te.reduce_axis((0, depth), name="k")

    def product(*index: Any) -> Any:
        *head, j = index
        packed_at = (j // bn, k // bk, j % bn, k % bk)
        weight = w[j, k] if transposed else w[packed_at]
        activation = read(*head, k).astype("int32")
        if offset:
            activation = activation - offset
        return te.sum(activation * weight.astype("int32"), axis=k)

    acc = te.compute((*lead[:-1], count, cols), product, name=ACC_BLOCK)

    def scaled(*index: Any) -> Any:
        j = index[-1]
        shifted = zero_point[()].astype("int32")
        if offset:
            shifted = shifted - offset
        centered = acc[index] - shifted * colsum[j]
        value = centered.astype("float32") * (x_scale[()] * w_scale[j])
        return value if bias is None else value + bias[j]

    return te.compute((*lead, cols), scaled, name="qmatmul_scale")


def _emit_relax_ops(bb: Any, match: _Match, visit: Any) -> Any:
    """The portable form in Relax ops (for CUDA's dlight rules); returns the new output var."""
    from tvm import relax

    op = relax.op
    x_q = visit(match.x_q)
    q = match.weight.q
    colsum = q.astype(np.int32).sum(axis=0, dtype=np.int32)
    acc = bb.emit(op.matmul(x_q, relax.const(q, "int8"), out_dtype="int32"))
    zero_point = op.astype(_scalar(bb, visit(match.x_zero_point)), "int32")
    centered = bb.emit(op.subtract(acc, op.multiply(zero_point, relax.const(colsum, "int32"))))
    scale = op.multiply(_scalar(bb, visit(match.x_scale)), relax.const(match.weight.scale))
    out = bb.emit(op.multiply(op.astype(centered, "float32"), scale))
    if match.bias is not None:
        out = bb.emit(op.add(out, relax.const(match.bias.astype(np.float32))))
    return out
