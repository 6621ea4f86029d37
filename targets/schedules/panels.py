"""Panel matmul rule: C[..., j] += A[..., k] * W_p[j/bn, k, j%bn, 0], over weight panels.

It takes the float kernels of `targets/panels.py` whose row count is symbolic (a sentence's
tokens) or a single one, and those over a group-wise weight's codes (below); other static ones
go to the Matmul rule, whose wider tiles over the same panels are faster there (it does not take
one row, which would fall to the row-reduction rule). Each task of the parallel loop computes an MR
x bn tile of C over the whole k, accumulating in a local buffer that LLVM keeps in registers
(`targets/stack_tiles.py` keeps it off the heap): per step of k, bn/lanes vector loads of the
panel, MR broadcasts of A and MR * bn/lanes fused multiply-adds. Panels run outermost, so one
panel (bn x k floats) stays in cache while every row tile passes over it. The kernel's rows are
whole tiles (`panels.whole_tiles`), so no tile is guarded: a guard on a row inside the reduction
would keep that row's accumulators in memory. The epilogue (bias, GELU, residual add, ...) is
applied as each tile is stored. The reduction loop is marked to prefetch the panel's stream
ahead (`targets/prefetch.py`): over a sentence's rows the kernel waits on its weights. Where
the instruction set has a tall tile, a symbolic row count runs tall tiles over the rows that
fill them, then MR-row ones, within one pass of the panel loop (`tall_tiles.py`).

A kernel over a group-wise weight's codes unpacks each panel once, before the row tiles pass
over it, into a k x bn float buffer (shift, mask, widen, convert and one fused multiply-subtract
per vector): k x bn unpacks per panel against rows x k x bn multiply-adds, and the tile's loop
is the float one (unpacked inside the reduction, the loop does not vectorize). A static row
count of one tile or less unpacks as often either way, so it unpacks in the tile and writes no
buffer.

`PANELS` holds the tile per instruction set, the first whose feature the target has; an
instruction set it gives None keeps its matmuls in the layout of `schedules/matmul.py`.
"""

from __future__ import annotations

from typing import Any

from nlpress.targets import panels, prefetch
from nlpress.targets.schedules import common, tall_tiles

# (LLVM feature, (rows MR, columns bn) or None, tall rows or 0), first match wins. A symbolic row
# count runs tall tiles first where the set has them, then MR-row ones (`tall_tiles.py`).
# AVX-512 has 32 vector registers: 12 x 32 floats is 24 accumulators, 2 panel vectors and a
# broadcast, so a sentence of up to 12 rows passes over the weights once; the 4 x 32 tiles left
# (at most 2) cost a pass each from cache. AVX2 has 16: 6 x 16 floats is 12 accumulators, 2 panel
# vectors and a broadcast, no room for a taller tile. `benchmarks/cpu.py --sweep` times others.
PANELS: tuple[tuple[str, tuple[int, int] | None, int], ...] = (
    ("avx512f", (4, 32), 12),
    ("avx2", (6, 16), 0),
)

# The tile of targets whose float matmuls keep their layout (aarch64): group-wise weights are
# still packed, since dequantized to a float constant the library would hold 8x their bytes.
# 4 x 16 floats is 16 of NEON's 32 vector registers.
GROUPED_TILE = (4, 16)

# Static row counts from which float kernels go to the Matmul rule (module doc).
MATMUL_RULE_ROWS = 2


def panel_tile(target: Any) -> tuple[int, int] | None:
    """(rows, columns) of the target's panel tile, None when its matmuls are not packed."""
    return _panels(target)[0]


def tall_rows(target: Any) -> int:
    """Rows of the target's tall tile over a symbolic row count (0: none, MR-row tiles only)."""
    return _panels(target)[1]


def _panels(target: Any) -> tuple[tuple[int, int] | None, int]:
    """The (tile, tall rows) of the first entry of PANELS whose feature the target has."""
    from tvm.target import codegen

    if target.kind.name != "llvm" or str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return None, 0
    for feature, tile, tall in PANELS:
        if codegen.target_has_features(feature, target):
            return tile, tall
    return None, 0


def grouped_panel_tile(target: Any) -> tuple[int, int] | None:
    """The tile for group-wise weights: the panel tile, or `GROUPED_TILE` on any CPU target."""
    tile = panel_tile(target)
    return tile if tile or target.kind.name != "llvm" else GROUPED_TILE


class PanelMatmul:
    """Schedule rule for the float matmul kernels over weight panels."""

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        """A schedule of `func`, or None when it is not a matmul over weight panels."""
        from tvm import s_tir

        sch = s_tir.Schedule(func)
        main = _panel_block(sch)
        if main is None:
            return None
        dequantize = _block(sch, panels.DEQUANTIZE_BLOCK)
        count = _static_rows(sch, main)
        if dequantize is None and count is not None and count >= MATMUL_RULE_ROWS:
            return None  # static rows: the Matmul rule's (module doc)
        rows = (panel_tile(target) or (4, 0))[0]
        if count is not None and count <= rows:
            dequantize = None  # one row tile per panel: it unpacks the codes itself (module doc)
        tall = tall_rows(target) if count is None and dequantize is None else 0
        if not tall:
            _tile(sch, main, target, rows, dequantize)
            return sch

        def tiled(tile_rows: int) -> tuple[Any, Any]:
            fresh = s_tir.Schedule(func)
            return fresh, _tile(fresh, _panel_block(fresh), target, tile_rows, None)

        return tall_tiles.tall_then_short(tiled, tall, rows)


def _block(sch: Any, name: str) -> Any:
    """The block called `name`, None when the kernel has none."""
    try:
        return sch.get_sblock(name)
    except Exception:  # no such block
        return None


def _panel_block(sch: Any) -> Any:
    """The kernel's reduction block C[..., j] += A[..., k] * W[j/bn, k, j%bn, 0], else None."""
    main = _block(sch, panels.ACC_BLOCK)
    if main is None:
        return None
    stmt = sch.get(main)
    weights = [r.source for r in stmt.reads if len(r.source.shape) == 4]
    loops = sch.get_loops(main)
    if len(weights) != 1 or len(loops) < 3 or len(loops) != len(stmt.iter_vars):
        return None  # already tiled, or not the panel kernel
    if None in (common.static_extent(sch, loop) for loop in loops[-2:]):
        return None  # the columns and the reduction are static
    return main


def _static_rows(sch: Any, main: Any) -> int | None:
    """The kernel's row count when it is a constant, else None."""
    return common.static_extent(sch, sch.get_loops(main)[-3])


def _tile(sch: Any, main: Any, target: Any, rows: int, dequantize: Any) -> Any:
    """Tile MR rows x one panel over the whole k; vectorize the panel, unroll the rows.

    Returns the loop over the row tiles.
    """
    common.inline_intermediates(sch, main, dequantize)
    weight = next(r.source for r in sch.get(main).reads if len(r.source.shape) == 4)
    bn = int(weight.shape[2])
    lanes = common.vector_lanes(target, 32)
    *outer, row, j, k = sch.get_loops(main)
    count = common.static_extent(sch, row)
    io, ii = sch.split(row, factors=[None, min(rows, count or rows)])
    jo, ji = sch.split(j, factors=[None, bn])
    sch.reorder(*outer, jo, io, k, ii, ji)
    common.write_back_tile(sch, main, io, target, lanes)
    if dequantize is not None:
        _dequantize_per_panel(sch, dequantize, jo, lanes)
    # The symbolic tile count stays its own loop: fused, it would make the bindings non-affine.
    parallel = [*outer, jo]
    if common.worth_parallel(common.block_work(sch, main)):
        sch.parallel(sch.fuse(*parallel) if len(parallel) > 1 else parallel[0])
    _vectorize_tile(sch, main, ji, ii, lanes)  # while the block is still a reduction
    sch.decompose_reduction(main, k)
    prefetch.mark(sch, k, bytes_per_step=bn * 4)
    return io


def _dequantize_per_panel(sch: Any, dequantize: Any, panel: Any, lanes: int) -> None:
    """Dequantize each panel once, before its row tiles, into a buffer they all read."""
    sch.compute_at(dequantize, panel)
    sch.set_scope(dequantize, 0, "local")
    common.split_vector(sch, sch.get_loops(dequantize)[-1], lanes)


def _vectorize_tile(sch: Any, main: Any, columns: Any, rows: Any, lanes: int) -> None:
    """Vectorize the tile's columns by `lanes`, unroll its vectors and its rows."""
    common.split_vector(sch, columns, lanes)
    sch.unroll(sch.get_loops(main)[-2])
    sch.unroll(rows)
