"""Row-reduction rule: softmax, layer norm, mean and other reductions over the inner axes.

Blocks must share their leading spatial axes (the rows). Each reduction is split by the vector
width and rfactored, so that its partial results accumulate in vector lanes instead of one
serial chain; the rows run in parallel, every block is computed per row, and the elementwise
blocks are vectorized. A row of symbolic length cannot be split so without a guard on each
lane; the softmax over one (`targets/softmax.py`) writes its partials per lane itself, and
here their lane axis is vectorized.
"""

from __future__ import annotations

from typing import Any

from nlpress.targets.schedules import common


class RowReduction:
    """Schedule rule for kernels mixing row reductions and elementwise blocks."""

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        """A schedule of `func`, or None when its blocks do not share leading spatial axes."""
        from tvm import s_tir
        from tvm.s_tir.dlight.analysis import get_root_block

        sch = s_tir.Schedule(func)
        in_lanes = _lane_partials(sch)
        _inline_single_use(sch, recompute=bool(in_lanes))
        blocks = sch.get_child_blocks(get_root_block(sch))
        kinds = [_kinds(sch, b) for b in blocks]
        if not any("R" in k for k in kinds) or any(not _is_row_block(k) for k in kinds):
            return None
        rows = min(len(k) - len(k.lstrip("S")) for k in kinds)
        work = [common.block_work(sch, b) for b in blocks]  # every block passes over the rows
        parallel = common.worth_parallel(None if None in work else sum(w or 0 for w in work))
        lanes = common.vector_lanes(target, _dtype_bits(sch, blocks[-1]))
        partials = in_lanes + [
            name
            for block, kind in zip(blocks, kinds, strict=True)
            if "R" in kind and (name := _vector_partials(sch, block, lanes))
        ]
        _per_row(sch, rows, lanes, parallel)
        for name in partials:
            _vectorize_lanes(sch, sch.get_sblock(name))
        return sch


def _kinds(sch: Any, block: Any) -> str:
    return "".join("S" if int(iv.iter_type) == 0 else "R" for iv in sch.get(block).iter_vars)


def _is_row_block(kinds: str) -> bool:
    """Spatial axes first, then (for a reduction) reduction axes only."""
    leading = len(kinds) - len(kinds.lstrip("S"))
    return leading > 0 and "S" not in kinds[leading:]


def _dtype_bits(sch: Any, block: Any) -> int:
    writes = sch.get(block).writes
    return int(writes[0].source.dtype.bits) if writes else 32


def _lane_partials(sch: Any) -> list[str]:
    """The reductions that the compute itself writes per vector lane (`targets/softmax.py`).

    They have one spatial axis more than the rows (the fewest leading spatial axes).
    """
    from tvm.s_tir.dlight.analysis import get_root_block

    blocks = sch.get_child_blocks(get_root_block(sch))
    leading = [(b, k, len(k) - len(k.lstrip("S"))) for b in blocks for k in [_kinds(sch, b)]]
    rows = min(n for _, _, n in leading)
    return [str(sch.get(b).name_hint) for b, k, n in leading if "R" in k and n > rows]


def _inline_single_use(sch: Any, recompute: bool) -> None:
    """Inline spatial blocks read by one block only (more readers would recompute them).

    With `recompute`, also those over a row of symbolic length that vectorized reductions
    read: kept, each row would allocate a buffer of its own.
    """
    from tvm.s_tir.dlight.analysis import get_root_block

    root = get_root_block(sch)
    outputs = {sch.get(b) for b in sch.get_output_blocks(root)}
    for block in sch.get_child_blocks(root):
        if sch.get(block) in outputs or "R" in _kinds(sch, block):
            continue
        if len(sch.get_consumers(block)) == 1 or (recompute and _symbolic_row(sch, block)):
            try:
                sch.compute_inline(block)
            except Exception:  # a block that cannot be inlined stays a block
                continue


def _symbolic_row(sch: Any, block: Any) -> bool:
    """Whether the block writes a buffer whose innermost dim is not a constant."""
    from tvm import tirx

    writes = sch.get(block).writes
    return bool(writes) and not isinstance(writes[0].source.shape[-1], tirx.IntImm)


def _vector_partials(sch: Any, block: Any, lanes: int) -> str | None:
    """Accumulate a reduction over its innermost axis in `lanes` partial results.

    Returns:
        The name of the block of partial results, or None when the reduction stays serial.

    """
    inner = sch.get_loops(block)[-1]
    extent = common.static_extent(sch, inner)
    if extent is None or extent < 2 * lanes or extent % lanes:
        return None
    _, lane = sch.split(inner, factors=[None, lanes])
    try:
        partial = sch.rfactor(lane, factor_axis=len(sch.get(block).writes[0].region))
    except Exception:  # a reducer rfactor does not know stays serial
        return None
    return str(sch.get(partial).name_hint)


def _vectorize_lanes(sch: Any, partial: Any) -> None:
    """Move the lane axis of a block of partial results innermost and vectorize it.

    compute_at left one loop per block axis, in axis order, under the row loop; the lane axis
    is the one that indexes the last dim of the partial results.
    """
    stmt = sch.get(partial)
    lane_var = stmt.writes[0].region[-1].min
    axes = [iv.var for iv in stmt.iter_vars]
    loops = sch.get_loops(partial)[-len(axes) :]
    matches = [i for i, var in enumerate(axes) if var.same_as(lane_var)]
    if len(matches) != 1:
        return
    lane = loops[matches[0]]
    sch.reorder(*[loop for loop in loops if loop != lane], lane)
    sch.vectorize(lane)


def _per_row(sch: Any, rows: int, lanes: int, parallel: bool) -> None:
    """Compute every block under the output's row loop; run the rows in parallel if asked.

    The row loop is the innermost of the rows that `common.parallel_rows` leaves.
    """
    from tvm.s_tir.dlight.analysis import get_root_block

    blocks = sch.get_child_blocks(get_root_block(sch))
    fused, inner = common.parallel_rows(sch, sch.get_loops(blocks[-1])[:rows])
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, inner or fused, preserve_unit_loops=True)
    if parallel and common.static_extent(sch, fused) != 1:
        sch.parallel(fused)
    for block in sch.get_child_blocks(get_root_block(sch)):
        loops = sch.get_loops(block)
        if "R" not in _kinds(sch, block) and len(loops) > 1:
            common.split_vector(sch, loops[-1], lanes)
