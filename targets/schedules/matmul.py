"""Matmul rule: dense and batched matmul (any layout), with their fused prologue and epilogue.

The reduction block is normalized to C[S, I, J] += A[S, I, K] * B[S, J, K] (dlight's reindex),
then tiled for registers: each task of the parallel loop computes an MR x NR tile of C over the
whole K, with NR a multiple of the vector width (J innermost, vectorized) and the MR rows
unrolled, accumulating in a small local buffer that LLVM keeps in registers (`stack_tiles` keeps
it out of TVM's workspace pool). The bias, GELU, residual add and other elementwise consumers
are applied while the tile is written back.

A symbolic I or J is padded to whole tiles first (`pad_einsum`): A's rows past I read zeros, B's
columns past J are zeros in a copy of B laid out [S, K, J] (contiguous along the vector axis),
and the padded C is stored whole, then sliced back to [S, I, J] in one elementwise pass that
applies the epilogue (a guard on the vector lanes of a tile's store makes TVM emit the lanes one
by one). No tile is partial, so no guard sits inside the reduction (a guard there keeps the
accumulators in memory instead of registers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nlpress.targets.schedules import common

# Register tiles with 512-bit vectors, (rows, vectors of columns), the widest whose columns divide
# the kernel's first: 24 or 16 of the 32 vector registers accumulate. Wide tiles load fewer
# weight vectors per multiply-add; on all-MiniLM-L6-v2 at 1x128, 4 x 6 vectors ran the model in
# 0.80-0.82 of the time of 8 x 2 (paired runs; 8 x 3, 6 x 3, 4 x 4 and 4 x 5: 0.83-0.94; 12 x 2,
# 6 x 4, 2 x 12: slower).
WIDE_TILES = ((4, 6), (4, 4), (8, 2))


@dataclass(frozen=True)
class Tile:
    """A register tile: `rows` x `cols` elements of C, `lanes` elements per vector."""

    rows: int
    cols: int
    lanes: int


def tile_for(target: Any, dtype_bits: int, columns: int | None = None) -> Tile:
    """The register tile for the target and the kernel's column count (None: symbolic).

    With 512-bit vectors, the first of WIDE_TILES whose width divides `columns` (8 x 32 floats
    when none does, and for a symbolic count, which is padded to whole tiles); 6 x 16 floats on
    AVX2 and NEON.
    """
    lanes = common.vector_lanes(target, dtype_bits)
    if common.vector_bits(target) >= 512:
        fitting = [t for t in WIDE_TILES if columns is not None and columns % (t[1] * lanes) == 0]
        rows, vectors = fitting[0] if fitting else WIDE_TILES[-1]
        return Tile(rows, vectors * lanes, lanes)
    return Tile(6, max(16, 2 * lanes), lanes)


class Matmul:
    """Schedule rule for kernels whose one reduction block is a matmul (batched or not)."""

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        """A schedule of `func`, or None when it is not a matmul with elementwise neighbours."""
        from tvm import s_tir

        sch = s_tir.Schedule(func)
        main = _matmul_block(sch)
        if main is None:
            return None
        common.inline_intermediates(sch, main)
        b_reindex = _normalize(sch, main)
        columns = common.static_extent(sch, sch.get_loops(main)[2])
        tile = tile_for(target, _dtype_bits(sch, main), columns)
        padded, b_copy = _pad_to_whole_tiles(sch, main, b_reindex, tile, target)
        common.inline_producers(sch, main, keep=b_copy)
        _tile(sch, main, tile, target, padded)
        return sch


def _matmul_block(sch: Any) -> Any:
    """The single gemm-like reduction block, if every other block is injective."""
    from tvm.s_tir.dlight.analysis import get_root_block
    from tvm.s_tir.dlight.gpu.matmul import get_index_map

    reductions = []
    for block in sch.get_child_blocks(get_root_block(sch)):
        kinds = {int(iv.iter_type) for iv in sch.get(block).iter_vars}
        if kinds - {0}:
            reductions.append(block)
    if len(reductions) != 1 or not sch.get_loops(reductions[0]):
        return None
    stmt = sch.get(reductions[0])
    if len(stmt.reads) < 2 or len(stmt.writes) != 1 or get_index_map(stmt) is None:
        return None
    return reductions[0]


def _normalize(sch: Any, main: Any) -> Any:
    """Rewrite the block to iterate (S, I, J, K) over reindexed A[S,I,K], B[S,J,K], C[S,I,J].

    Returns the block that copies B into its reindexed buffer.
    """
    from tvm.s_tir.dlight.gpu.matmul import get_index_map

    reindex_a = sch.reindex(main, ("read", 0))
    reindex_b = sch.reindex(main, ("read", 1))
    reindex_c = sch.reindex(main, ("write", 0))
    maps = get_index_map(sch.get(main))
    assert maps is not None
    sch.transform_layout(reindex_a, ("write", 0), maps[1])
    sch.transform_layout(reindex_b, ("write", 0), maps[2])
    sch.transform_layout(reindex_c, ("read", 0), maps[3])
    sch.transform_block_layout(main, maps[0])
    return reindex_b


def _pad_to_whole_tiles(
    sch: Any, main: Any, b_reindex: Any, tile: Tile, target: Any
) -> tuple[bool, Any]:
    """Pad the symbolic I and J of the normalized block to whole tiles.

    Returns whether it padded, and B's padded copy when J was padded: kept, laid out
    [S, K, J] and computed before the matmul. A's padding is left to be inlined (one scalar
    select per row and step of K).
    """
    from nlpress.targets.schedules.elementwise import schedule_block

    _, i, j, _ = sch.get_loops(main)
    rows = tile.rows if common.static_extent(sch, i) is None else 1
    cols = tile.cols if common.static_extent(sch, j) is None else 1
    if rows == cols == 1:
        return False, None
    sch.pad_einsum(main, [1, rows, cols, 1])
    if cols == 1:
        return True, None
    [b_copy] = sch.get_consumers(b_reindex)
    common.inline_producers(sch, b_copy)
    sch.transform_layout(b_copy, ("write", 0), lambda s, j, k: (s, k, j))
    s, j, k = sch.get_loops(b_copy)
    sch.reorder(s, k, j)  # iterate as the copy is laid out: its vectors are contiguous
    schedule_block(sch, b_copy, target)
    return True, b_copy


def _dtype_bits(sch: Any, main: Any) -> int:
    return int(sch.get(main).writes[0].source.dtype.bits)


def _tile(sch: Any, main: Any, tile: Tile, target: Any, padded: bool) -> None:
    """Register-tile the normalized block, write back with the epilogue, parallelize.

    `padded`: the symbolic axes are whole tiles (`_pad_to_whole_tiles`).
    """
    batch, i, j, k = sch.get_loops(main)
    whole = padded or None not in (common.static_extent(sch, i), common.static_extent(sch, j))
    rows = _fit(common.static_extent(sch, i), tile.rows)
    cols = _fit(common.static_extent(sch, j), tile.cols)
    io, ii = sch.split(i, factors=[None, rows])
    jo, ji = sch.split(j, factors=[None, cols])
    sch.reorder(batch, jo, io, k, ii, ji)
    if whole:
        _write_back_per_tile(sch, main, io, tile.lanes, target, padded)
    vector = common.split_vector(sch, ji, tile.lanes)
    if vector != ji:
        sch.unroll(sch.get_loops(main)[-2])
    sch.unroll(ii)
    if common.worth_parallel(common.block_work(sch, main)):
        sch.parallel(sch.fuse(batch, jo, io))
    sch.decompose_reduction(main, k)
    if not whole:
        _write_back_after(sch, main, target)


def _write_back_per_tile(
    sch: Any, main: Any, tile_loop: Any, lanes: int, target: Any, padded: bool
) -> None:
    """Accumulate each tile in a local buffer; apply the epilogue as the tile is stored.

    A `padded` C is stored whole, and its slice back to the real extents (with the epilogue)
    is one elementwise pass after: inlined into the tile's store, the slice would guard the
    store's vector lanes.
    """
    write_back = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(write_back, tile_loop, preserve_unit_loops=True)
    common.split_vector(sch, sch.get_loops(write_back)[-1], lanes)
    if padded or not common.inline_consumers(sch, write_back):
        _write_back_after(sch, write_back, target)


def _write_back_after(sch: Any, main: Any, target: Any) -> None:
    """Symbolic rows or columns: the epilogue runs as one elementwise pass after the matmul.

    (A store computed at the tile loop would lose the bounds check of a partial tile when its
    size is symbolic.)
    """
    from nlpress.targets.schedules.elementwise import schedule_block

    for store in sch.get_consumers(main):
        common.inline_consumers(sch, store)
        schedule_block(sch, store, target)


def _fit(extent: int | None, size: int) -> int:
    """The tile size along an axis of `extent` elements: `size`, or the whole axis if smaller."""
    if extent is None or extent >= size:
        return size
    return max(extent, 1)
