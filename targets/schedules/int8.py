"""Integer matmul rule: C[..., n] += u8 A[..., k] * s8 W_p[n/bn, k/bk, n%bn, k%bk], by blocks.

It takes the kernels of `targets/quantized.py` (int32 sums of uint8 x int8 products over a
weight packed in bn x bk blocks, with a float epilogue). Each task of the parallel loop computes
an MR x (NB*bn) tile of C over the whole k, accumulating in a local buffer that LLVM keeps in
registers (on the stack, not TVM's workspace pool: `targets/stack_tiles.py`). One block (bn
columns x bk reduction steps) is one instruction of the target's kernel family
(`int8_intrinsics.FAMILIES`: vpdpbusd, vpmaddwd, usdot, sdot, smull), or, for the generic
family, bn columns vectorized plainly. Column tiles run outermost, so a tile's weight panel
stays in cache while every row tile passes over it. The epilogue (zero-point correction, scales,
bias and fused elementwise consumers) is applied as each tile is stored. Where the family has a
tall tile, a symbolic row count runs tall tiles over the rows that fill them, then MR-row ones,
within one pass of the column tiles (`tall_tiles.py`).
"""

from __future__ import annotations

import logging
from typing import Any

from nlpress.targets import panels
from nlpress.targets.schedules import common, int8_intrinsics, tall_tiles
from nlpress.targets.schedules.int8_intrinsics import Int8Kernel

log = logging.getLogger(__name__)

# Register tile per family: (rows MR, blocks NB); MR * NB accumulators of bn int32 each.
# Over a symbolic row count, rows run in tiles of at most `panels.SYMBOLIC_INT8_ROWS`, after tall
# tiles of TALL_TILES (rows, blocks) where the family has them (`tall_tiles.py`): 12 x 2 blocks is
# 24 of AVX-512's 32 registers, so a sentence of up to 12 rows passes over the weights once.
TALL_TILES = {"avx512-vnni": (12, 2)}
TILES = {
    "avx512-vnni": (8, 3),
    "avx-vnni": (4, 3),
    "avx2": (4, 2),
    "neon-i8mm": (4, 2),
    "neon-dotprod": (4, 2),
    "neon": (4, 2),
    "generic": (4, 1),
}


class Int8Matmul:
    """Schedule rule for the integer matmul kernels of QDQ MatMuls."""

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        """A schedule of `func`, or None when it is not an integer matmul over packed weights."""
        sch, main = _prepared(func)
        if main is None:
            return None
        kernel = int8_intrinsics.int8_kernel(target)
        block = _weight_block(sch, main)
        if block != kernel.block or not int8_intrinsics.fits(sch.get(main), kernel):
            kernel = int8_intrinsics.GENERIC  # a kernel built for another family: vectorized
        max_rows, max_blocks = TILES[kernel.family]
        row = sch.get_loops(main)[-3]
        short = _rows_for(sch, row, max_rows)
        tall = TALL_TILES.get(kernel.family)
        if tall is None or short == 1 or common.static_extent(sch, row) is not None:
            _tile(sch, main, target, kernel, block, (short, max_blocks))
            return sch
        depth = common.static_extent(sch, sch.get_loops(main)[-1]) or 0
        # decompose_reduction names the tiled sum "<name>_update"
        tall_sum = (f"{sch.get(main).name_hint}_update", _intrinsic(kernel, depth, block[1]))
        return _tall_then_short(func, target, kernel, block, tall, short, tall_sum)


def _tall_then_short(
    func: Any,
    target: Any,
    kernel: Int8Kernel,
    block: tuple[int, int],
    tall: tuple[int, int],
    short: int,
    tall_sum: tuple[str, Any],
) -> Any:
    """Tiles of `tall` (rows, blocks) over the rows that fill them, then `short`-row ones.

    `tall_sum` is the name of the tiled sum's block and the instruction for its blocks (None:
    vectorized plainly).

    The tall tiles' split guard goes only with the stitch (`tall_tiles.py`), and no guarded
    block matches the intrinsic, so they are tensorized after it; the short ones before it
    (tensorized in a loop that does not start at row 0, a block's binding loses the offset).
    """

    def tiled(rows: int) -> tuple[Any, Any]:
        fresh, main = _prepared(func)
        tile = (rows, tall[1])
        return fresh, _tile(fresh, main, target, kernel, block, tile, True, rows == short)

    stitched = tall_tiles.tall_then_short(tiled, tall[0], short)
    name, intrinsic = tall_sum
    if intrinsic is not None:
        first = tall_tiles.blocks_named(stitched, name)[0]
        stitched.tensorize(stitched.get_loops(first)[-2], intrinsic)
    return stitched


def _prepared(func: Any) -> tuple[Any, Any]:
    """A schedule of `func` with its integer block's producers inlined, and the block (or None)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    main = _int8_block(sch)
    if main is not None:
        common.inline_intermediates(sch, main)
    return sch, main


def integer_reduction(sch: Any) -> tuple[Any, Any] | None:
    """The kernel's one int32 sum of uint8 (or int16) x int8 products and its int8 weight, or None.

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
    if sorted(str(b.dtype) for b in others) not in (["int8", "uint8"], ["int16", "int8"]):
        return None
    kinds = [int(iv.iter_type) for iv in stmt.iter_vars]
    if kinds[-1] != 2 or set(kinds[:-1]) != {0} or len(kinds) < 3:
        return None
    if len(sch.get_loops(reductions[0])) != len(kinds):  # already tiled
        return None
    return reductions[0], next(b for b in others if str(b.dtype) == "int8")


def _int8_block(sch: Any) -> Any:
    """The single reduction block C[..., j] += u8 A[..., k] * s8 W[j/bn, k/bk, j%bn, k%bk]."""
    found = integer_reduction(sch)
    if found is None:
        return None
    block, weight = found
    if len(weight.shape) != 4 or None in (_int(d) for d in weight.shape[2:]):
        return None
    columns, depth = (common.static_extent(sch, loop) for loop in sch.get_loops(block)[-2:])
    if columns is None or depth is None or columns % _int(weight.shape[2]):  # type: ignore[operator]
        return None
    return block


def _weight_block(sch: Any, main: Any) -> tuple[int, int]:
    """(bn, bk) of the packed weight the block reads."""
    weight = next(r.source for r in sch.get(main).reads if str(r.source.dtype) == "int8")
    return int(weight.shape[2]), int(weight.shape[3])


def _int(value: Any) -> int | None:
    return int(value.value) if hasattr(value, "value") else None


def _tile(
    sch: Any,
    main: Any,
    target: Any,
    kernel: Int8Kernel,
    block: tuple[int, int],
    tile: tuple[int, int],
    rows_apart: bool = False,
    tensorize: bool = True,
) -> Any:
    """Tile MR rows x (NB x bn) columns over k in steps of bk; tensorize or vectorize each block.

    Only the innermost row axis is tiled (fusing the row axes first would make the block's
    bindings non-affine, which tensorization cannot split). The row tiles run in the parallel
    loop, or (`rows_apart`, for `tall_tiles`) in their own loop inside it. Returns the loop
    over row tiles.
    """
    bn, bk = block
    *outer, row, j, k = sch.get_loops(main)
    columns, depth = common.static_extent(sch, j), common.static_extent(sch, k)
    assert columns is not None and depth is not None
    mr, max_blocks = tile
    blocks = common.largest_divisor(columns // bn, max_blocks)
    io, ii = sch.split(row, factors=[None, mr])
    jo, jb, ji = sch.split(j, factors=[None, blocks, bn])
    ko, ki = sch.split(k, factors=[None, bk])
    sch.reorder(*outer, jo, io, ko, ii, jb, ji, ki)
    common.write_back_tile(sch, main, io, target, bn)
    if common.worth_parallel(common.block_work(sch, main)):
        parallel = [*outer, jo] if rows_apart else [*outer, jo, io]
        sch.parallel(sch.fuse(*parallel) if len(parallel) > 1 else parallel[0])
    intrinsic = _intrinsic(kernel, depth, bk)
    if intrinsic is None:  # the reduction steps outside, the bn columns in one vector
        sch.reorder(ki, ji)
        sch.vectorize(ji)
        sch.unroll(ki)
    init = sch.decompose_reduction(main, ko)
    *_, init_rows, init_blocks, init_columns = sch.get_loops(init)
    sch.vectorize(init_columns)
    sch.unroll(init_blocks)
    sch.unroll(init_rows)
    if intrinsic is not None and tensorize:
        sch.tensorize(ji, intrinsic)
    sch.unroll(jb)
    sch.unroll(ii)
    return io


def _intrinsic(kernel: Int8Kernel, depth: int, bk: int) -> Any:
    """The family's instruction for a block of the sum, None when k is not whole blocks."""
    return kernel.intrinsic if depth % bk == 0 else None


def _rows_for(sch: Any, row: Any, limit: int) -> int:
    """Rows per tile: the largest divisor of the row count up to `limit`.

    A symbolic count gets `limit`, capped by `panels.int8_tile_rows`, when the rows are padded
    to whole tiles of it (`panels.whole_tiles`), else one row. A tile never straddles the last
    row, so no tile needs a bounds guard.
    """
    extent = common.static_extent(sch, row)
    if extent is not None:
        return common.largest_divisor(extent, limit)
    limit = panels.int8_tile_rows(sch.get(row).extent, limit)
    return limit if common.extent_divisible(sch, row, limit) else 1
