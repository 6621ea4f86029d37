"""Panel matmul rule: C[..., j] += A[..., k] * W_p[j/bn, k, j%bn, 0], over weight panels.

It takes the float kernels of `targets/panels.py`. Each task of the parallel loop computes an
MR x bn tile of C over the whole k, accumulating in a local buffer that LLVM keeps in
registers: per step of k, bn/lanes vector loads of the panel, MR broadcasts of A and
MR * bn/lanes fused multiply-adds. Panels run outermost, so one panel (bn x k floats) stays in
cache while every row tile passes over it. A last tile with fewer than MR rows is guarded. The
epilogue (bias, GELU, residual add, ...) is applied as each tile is stored.

`PANELS` holds the tile per instruction set, the first whose feature the target has; an
instruction set it gives None keeps its matmuls in the layout of `schedules/matmul.py`.
"""

from __future__ import annotations

from typing import Any

from nlpress.targets import panels
from nlpress.targets.schedules import common

# (LLVM feature, (rows MR, columns bn) or None), first match wins. AVX2 has 16 vector
# registers: 6 x 16 floats is 12 accumulators, 2 panel vectors and a broadcast.
PANELS: tuple[tuple[str, tuple[int, int] | None], ...] = (
    ("avx512f", None),
    ("avx2", (6, 16)),
)
# The activation rows one pass of the panels reads: half of a 512 KiB L2 cache.
CHUNK_BYTES = 256 * 1024


def panel_tile(target: Any) -> tuple[int, int] | None:
    """(rows, columns) of the target's panel tile, None when its matmuls are not packed."""
    from tvm.target import codegen

    if target.kind.name != "llvm" or str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return None
    for feature, tile in PANELS:
        if codegen.target_has_features(feature, target):
            return tile
    return None


class PanelMatmul:
    """Schedule rule for the float matmul kernels over weight panels."""

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        """A schedule of `func`, or None when it is not a matmul over weight panels."""
        from tvm import s_tir

        sch = s_tir.Schedule(func)
        main = _panel_block(sch)
        if main is None:
            return None
        common.inline_intermediates(sch, main)
        rows = (panel_tile(target) or (4, 0))[0]
        _tile(sch, main, target, rows)
        return sch


def _panel_block(sch: Any) -> Any:
    """The kernel's reduction block C[..., j] += A[..., k] * W[j/bn, k, j%bn, 0], else None."""
    try:
        main = sch.get_sblock(panels.ACC_BLOCK)
    except Exception:  # no such block: another kernel
        return None
    stmt = sch.get(main)
    weights = [r.source for r in stmt.reads if len(r.source.shape) == 4]
    loops = sch.get_loops(main)
    if len(weights) != 1 or len(loops) < 3 or len(loops) != len(stmt.iter_vars):
        return None  # already tiled, or not the panel kernel
    if None in (common.static_extent(sch, loop) for loop in loops):
        return None
    return main


def _tile(sch: Any, main: Any, target: Any, rows: int) -> None:
    """Tile MR rows x one panel over the whole k; vectorize the panel, unroll the rows.

    Rows go in chunks whose activations fit in CHUNK_BYTES: every panel passes over one chunk
    before the next chunk is read.
    """
    weight = next(r.source for r in sch.get(main).reads if len(r.source.shape) == 4)
    bn = int(weight.shape[2])
    lanes = common.vector_lanes(target, 32)
    *outer, row, j, k = sch.get_loops(main)
    row_count, depth = common.static_extent(sch, row) or rows, common.static_extent(sch, k) or 1
    mr = min(rows, row_count)
    tiles_per_chunk = max(CHUNK_BYTES // (depth * 4 * mr), 1)
    chunk, io, ii = sch.split(row, factors=[None, tiles_per_chunk, mr])
    jo, ji = sch.split(j, factors=[None, bn])
    sch.reorder(*outer, chunk, jo, io, k, ii, ji)
    common.write_back_tile(sch, main, io, target, lanes)
    if common.worth_parallel(common.block_work(sch, main)):
        sch.parallel(sch.fuse(*outer, chunk, jo, io))
    sch.decompose_reduction(main, k)
    common.split_vector(sch, ji, lanes)
    sch.unroll(sch.get_loops(main)[-2])
    sch.unroll(ii)
