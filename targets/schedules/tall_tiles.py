"""Tall tiles, then short ones: a sentence's rows in as few passes over the weights as fit.

A matmul kernel over a symbolic row count tiles its rows by MR and passes over its weight panel
once per row tile: the first pass streams the panel from L3 or memory while it multiplies, the
others read it from cache, so over a sentence's rows (ten to twenty for most) the kernel's time
grows by one pass per MR rows. A tall tile does more rows per pass, but a sentence's rows padded
to whole tall tiles compute up to tall - 1 rows in vain.

Here one compute, its rows padded to whole short tiles (T rows, a multiple of MR), is scheduled
twice: with tall tiles (`tall` rows, a multiple of MR) and with short ones (MR rows), each
rule marking its row-tile loop (`mark`). `stitch` keeps the first schedule's nest and, in place
of its row-tile loop, runs two: the tall tiles over the first floor(T / tall) * tall rows, then
the short schedule's row-tile loop (its enclosing loops' variables renamed to the tall ones) over
the at most tall / MR - 1 short tiles left. So every tile is whole (its split guard holds for
every row it runs: the loop never reaches a partial tile), both loops read the panel while it is
in cache, and rows past T are never computed.
"""

from __future__ import annotations

from typing import Any

from nlpress.targets.schedules import loops

# The loop annotation that marks a schedule's row-tile loop, its value the tile's rows.
ROW_TILES = "nlpress_row_tiles"


def mark(sch: Any, loop: Any, rows: int) -> None:
    """Mark `loop` as the row-tile loop of tiles of `rows` rows."""
    sch.annotate(loop, ROW_TILES, rows)


def tall_then_short(tiled: Any, tall: int, short: int) -> Any:
    """The Schedule of the two `tiled(rows)` schedules, tall then short, stitched (module doc).

    `tiled(rows)` schedules a fresh copy of the kernel with tiles of `rows` rows and returns the
    schedule and its row-tile loop; both copies must nest the row tiles in the same loops.
    """
    from tvm import s_tir

    if tall % short:
        raise ValueError(f"tall tiles of {tall} rows are not whole tiles of {short}")
    funcs = []
    for rows in (tall, short):
        sch, tiles = tiled(rows)
        mark(sch, tiles, rows)
        funcs.append(sch.mod["main"])
    return s_tir.Schedule(stitch(*funcs))


def blocks_named(sch: Any, name: str) -> list[Any]:
    """The blocks of the stitched schedule `sch` called `name`: the tall tiles' one first."""
    from tvm.s_tir.dlight.analysis import get_root_block

    return [b for b in sch.get_child_blocks(get_root_block(sch)) if sch.get(b).name_hint == name]


def stitch(tall: Any, short: Any) -> Any:
    """The PrimFunc `tall` with its row tiles followed by those of `short` (module doc)."""
    import tvm_ffi
    from tvm import tirx
    from tvm.s_tir import SBlock, SBlockRealize

    from nlpress.targets.stack_tiles import loop_with

    tall_tiles, tall_outer = _row_tiles(tall)
    short_tiles, short_outer = _row_tiles(short)
    if len(tall_outer) != len(short_outer):
        raise ValueError("the two schedules nest their row tiles differently")
    short_rows = int(short_tiles.annotations[ROW_TILES])
    ratio = int(tall_tiles.annotations[ROW_TILES]) // short_rows
    whole = tirx.floordiv(short_tiles.extent, ratio)  # tall tiles that the T rows fill
    start = whole * ratio  # the first short tile
    tile = tirx.Var(short_tiles.loop_var.name, short_tiles.loop_var.ty)
    renamed = [(s.loop_var, t.loop_var) for s, t in zip(short_outer, tall_outer, strict=True)]
    body = loops.copy_with(short_tiles.body, [(short_tiles.loop_var, tile + start), *renamed])
    rest = loop_with(
        short_tiles, loop_var=tile, extent=short_tiles.extent - start, body=body, annotations={}
    )
    padded = short_tiles.extent * short_rows

    def both(loop: Any) -> Any:
        if not loop.loop_var.same_as(tall_tiles.loop_var):
            return loop
        tall_part = _unguarded(loop_with(loop, extent=whole, annotations={}), padded)
        return tirx.SeqStmt([tall_part, rest])

    realize = tvm_ffi.structural_map(tall.body, ((tirx.For, both),))
    root = realize.block
    block = SBlock(
        root.iter_vars,
        root.reads,
        root.writes,
        root.name_hint,
        root.body,
        root.init,
        [*root.alloc_buffers, *short.body.block.alloc_buffers],
        root.match_buffers,
        root.annotations,
    )
    return tall.with_body(SBlockRealize(realize.iter_values, realize.predicate, block))


def _unguarded(tiles: Any, padded: Any) -> Any:
    """The row-tile loop `tiles` without its split's guard, row < `padded` (the rows T).

    The loop runs whole tall tiles only, so the guard holds for every row it runs.
    """
    import tvm_ffi
    from tvm import sym, tirx
    from tvm.s_tir import SBlockRealize

    analyzer = sym.Analyzer()

    def unguarded(realize: Any) -> Any:
        guard = realize.predicate
        if not isinstance(guard, tirx.LT) or not analyzer.can_prove(guard.b == padded):
            return realize
        return SBlockRealize(realize.iter_values, tirx.const(True, "bool"), realize.block)

    return tvm_ffi.structural_map(tiles, ((SBlockRealize, unguarded),))


def _row_tiles(func: Any) -> tuple[Any, list[Any]]:
    """The marked row-tile loop of `func`, and the loops around it, outermost first."""
    nested = loops.nested(func.body)
    marked = [loop for loop in nested if ROW_TILES in loop.annotations]
    if len(marked) != 1:
        raise ValueError(f"{len(marked)} row-tile loops marked, not one")
    [tiles] = marked
    around = [
        loop
        for loop in nested
        if not loop.same_as(tiles)
        and any(inner.same_as(tiles) for inner in loops.nested(loop.body))
    ]
    return tiles, around
