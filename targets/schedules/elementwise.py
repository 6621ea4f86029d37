"""Elementwise rule: injective kernels (adds, casts, transposes, gathers, masks).

Every intermediate block is inlined into the outputs; each output's loops are fused, the inner
part vectorized to the target's width and the outer part run in parallel.
"""

from __future__ import annotations

from typing import Any

from nlpress.targets.schedules import common


class Elementwise:
    """Schedule rule for kernels whose blocks are all spatial (no reduction)."""

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        """A schedule of `func`, or None when it has a reduction or opaque block."""
        from tvm import s_tir
        from tvm.s_tir.dlight.analysis import get_root_block

        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(get_root_block(sch))
        if not blocks or not all(_is_spatial(sch, b) for b in blocks):
            return None
        common.inline_intermediates(sch)
        for block in sch.get_child_blocks(get_root_block(sch)):
            schedule_block(sch, block, target)
        return sch


def _is_spatial(sch: Any, block: Any) -> bool:
    stmt = sch.get(block)
    return bool(stmt.iter_vars) and all(int(iv.iter_type) == 0 for iv in stmt.iter_vars)


def schedule_block(sch: Any, block: Any, target: Any) -> None:
    """Fuse the block's loops, vectorize the inner part and parallelize the outer one.

    With a symbolic extent, the axes up to the last symbolic one are the rows, run in parallel
    (`common.parallel_rows`), and the static axes after it are fused into the vector loop, so
    that the index arithmetic of a symbolic shape (divisions by unknown extents) runs once per
    row at most, not once per element.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    bits = int(sch.get(block).writes[0].source.dtype.bits) if sch.get(block).writes else 32
    lanes = common.vector_lanes(target, bits)
    extents = [common.static_extent(sch, loop) for loop in loops]
    if None in extents and len(loops) > 1:
        last = max(i for i, extent in enumerate(extents) if extent is None)
        split = min(last + 1, len(loops) - 1)  # at least one loop on each side
        rows, columns = loops[:split], loops[split:]
        sch.parallel(common.parallel_rows(sch, rows)[0])
        common.split_vector(sch, _fused(sch, columns), lanes)
        return
    fused = _fused(sch, loops)
    extent = common.static_extent(sch, fused)
    if not common.worth_parallel(extent):
        common.split_vector(sch, fused, lanes)
        return
    if extent is not None and extent % lanes:
        sch.parallel(fused)
        return
    outer, inner = sch.split(fused, factors=[None, lanes])
    sch.parallel(outer)
    sch.vectorize(inner)


def _fused(sch: Any, loops: Any) -> Any:
    """The loops fused into one (the loop itself when there is one)."""
    return sch.fuse(*loops) if len(loops) > 1 else loops[0]
