"""Integer matmul rule: C[..., n] += u8 A[..., k] * s8 W_p[n/16, k/4, n%16, k%4], with dot products.

It takes the kernels of `targets/quantized.py` (int32 sums of uint8 x int8 products over a weight
packed in 16x4 blocks, with a float epilogue). The rows are fused; each task of the parallel loop
computes an MR x (NB*16) tile of C over the whole k, accumulating in a local buffer. The inner
16 columns x 4 reduction steps match one 64-byte block of the packed weight and are tensorized
with the target's dot-product instruction: vpdpbusd (AVX-512 VNNI, u8 x s8 -> s32), or NEON's
usdot (+i8mm) or sdot (+dotprod, over activations shifted by 128; `int8_intrinsics.py`).
Targets without one (AVX2, plain NEON) get the same tiling with the 16 columns vectorized.
The epilogue (zero-point correction, scales, bias and fused elementwise consumers) is applied
as each tile is stored.
"""

from __future__ import annotations

import logging
from typing import Any

from nlpress.targets.schedules import common, int8_intrinsics

log = logging.getLogger(__name__)

BLOCK_N = 16
BLOCK_K = 4
# Rows of the register tile, and 16-column blocks per tile (MR * NB int32 vector accumulators).
MR = 8
NB = 3


def dot_intrinsic(target: Any) -> str | None:
    """The name of the 16x4 u8 x s8 -> s32 tensor intrinsic the target has, else None."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return None
    if codegen.target_has_features("avx512vnni", target):
        return int8_intrinsics.x86_dot_intrinsic().name
    arm = int8_intrinsics.arm_dot_intrinsic(target)
    return None if arm is None else arm.name


class Int8Matmul:
    """Schedule rule for the integer matmul kernels of QDQ MatMuls."""

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        """A schedule of `func`, or None when it is not an integer matmul over packed weights."""
        from tvm import s_tir

        sch = s_tir.Schedule(func)
        main = _int8_block(sch)
        if main is None:
            return None
        common.inline_intermediates(sch, main)
        intrinsic = dot_intrinsic(target)
        if not int8_intrinsics.fits(sch.get(main), intrinsic):
            intrinsic = None  # a kernel built for another activation offset: vectorized
        _tile(sch, main, target, intrinsic)
        return sch


def integer_reduction(sch: Any) -> tuple[Any, Any] | None:
    """The kernel's one int32 sum of uint8 x int8 products and its int8 weight, or None.

    The block must be untiled: spatial axes, then one reduction axis.
    """
    from tvm.s_tir.dlight.analysis import get_root_block

    reductions = [
        block
        for block in sch.get_child_blocks(get_root_block(sch))
        if {int(iv.iter_type) for iv in sch.get(block).iter_vars} - {0}
    ]
    if len(reductions) != 1:
        return None
    stmt = sch.get(reductions[0])
    if len(stmt.writes) != 1 or str(stmt.writes[0].source.dtype) != "int32":
        return None
    others = [r.source for r in stmt.reads if r.source != stmt.writes[0].source]
    if sorted(str(b.dtype) for b in others) != ["int8", "uint8"]:
        return None
    kinds = [int(iv.iter_type) for iv in stmt.iter_vars]
    if kinds[-1] != 2 or set(kinds[:-1]) != {0} or len(kinds) < 3:
        return None
    if len(sch.get_loops(reductions[0])) != len(kinds):  # already tiled
        return None
    return reductions[0], next(b for b in others if str(b.dtype) == "int8")


def _int8_block(sch: Any) -> Any:
    """The single reduction block C[..., j] += u8 A[..., k] * s8 W[j/16, k/4, j%16, k%4]."""
    found = integer_reduction(sch)
    if found is None:
        return None
    block, weight = found
    if len(weight.shape) != 4 or [_int(d) for d in weight.shape[2:]] != [BLOCK_N, BLOCK_K]:
        return None
    columns, depth = (common.static_extent(sch, loop) for loop in sch.get_loops(block)[-2:])
    if columns is None or depth is None or columns % BLOCK_N:
        return None
    return block


def _int(value: Any) -> int | None:
    return int(value.value) if hasattr(value, "value") else None


def _tile(sch: Any, main: Any, target: Any, intrinsic: str | None) -> None:
    """Tile rows x (NB x 16) columns over k in steps of 4; tensorize or vectorize the 16 x 4.

    Only the innermost row axis is tiled (fusing the row axes first would make the block's
    bindings non-affine, which tensorization cannot split).
    """
    *outer, row, j, k = sch.get_loops(main)
    row_extent = common.static_extent(sch, row)
    columns, depth = common.static_extent(sch, j), common.static_extent(sch, k)
    assert columns is not None and depth is not None
    max_rows, max_blocks = _register_tile(target)
    mr = _rows_for(row_extent, max_rows)
    blocks = _largest_divisor_at_most(columns // BLOCK_N, max_blocks)
    io, ii = sch.split(row, factors=[None, mr])
    jo, jb, ji = sch.split(j, factors=[None, blocks, BLOCK_N])
    ko, ki = sch.split(k, factors=[None, BLOCK_K])
    sch.reorder(*outer, io, jo, ko, ii, jb, ji, ki)
    _write_back(sch, main, jo, target)
    if common.worth_parallel(common.block_work(sch, main)):
        sch.parallel(sch.fuse(*outer, io, jo))
    tensorize = intrinsic is not None and depth % BLOCK_K == 0
    if not tensorize:  # the 4-step reduction outside, the 16 columns in one vector
        sch.reorder(ki, ji)
        sch.vectorize(ji)
        sch.unroll(ki)
    init = sch.decompose_reduction(main, ko)
    *_, init_rows, init_blocks, init_columns = sch.get_loops(init)
    sch.vectorize(init_columns)
    sch.unroll(init_blocks)
    sch.unroll(init_rows)
    if tensorize:
        sch.tensorize(ji, intrinsic)
    sch.unroll(jb)
    sch.unroll(ii)


def _register_tile(target: Any) -> tuple[int, int]:
    """(rows, 16-column blocks) of the tile: 8 x 3 int32 vectors with 32 zmm registers."""
    if common.vector_bits(target) >= 512:
        return MR, NB
    return 4, 1


def _rows_for(row_extent: int | None, limit: int) -> int:
    """Rows per tile: the largest divisor of the row count up to `limit` (symbolic: one row).

    A tile never straddles the last row, so no tile needs a bounds guard.
    """
    if row_extent is None:
        return 1
    return _largest_divisor_at_most(row_extent, limit)


def _largest_divisor_at_most(value: int, limit: int) -> int:
    return max(d for d in range(1, min(value, limit) + 1) if value % d == 0)


def _write_back(sch: Any, main: Any, tile_loop: Any, target: Any) -> None:
    """Accumulate each tile locally; store it through the epilogue at the tile loop."""
    from nlpress.targets.schedules.elementwise import schedule_block

    write_back = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(write_back, tile_loop, preserve_unit_loops=True)
    inlined = common.inline_consumers(sch, write_back)
    *_, rows, columns = sch.get_loops(write_back)
    blocks, vector = sch.split(columns, factors=[None, BLOCK_N])
    sch.vectorize(vector)
    sch.unroll(blocks)
    sch.unroll(rows)
    if inlined:
        return
    # A consumer that could not be inlined (the slice of padded columns): stored after.
    for store in sch.get_consumers(write_back):
        common.inline_consumers(sch, store)
        schedule_block(sch, store, target)
