"""Shared helpers of the CPU schedule rules: the target's vector width, loop extents, inlining."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Target features that widen the float vector registers LLVM can use (bits).
_WIDTHS = (("avx512f", 512), ("avx2", 256), ("avx", 256), ("neon", 128), ("sse", 128))
# x86 CPUs with AVX-512 that nlpress's x86 target may name (LLVM's names, by prefix).
_AVX512_CPUS = (
    "znver4", "znver5", "skylake-avx512", "cascadelake", "cooperlake", "cannonlake",
    "icelake", "tigerlake", "sapphirerapids", "emeraldrapids", "graniterapids",
    "rocketlake", "alderlake-avx512", "x86-64-v4", "knl", "knm", "diamondrapids",
)  # fmt: skip
_AVX2_CPUS = (
    "haswell", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "znver1",
    "znver2", "znver3", "x86-64-v3", "arrowlake", "lunarlake", "gracemont",
)  # fmt: skip


# Kernels with less work than this (elements, or multiply-adds for matmuls) run on one thread:
# a parallel launch is a barrier, costly when the cores are shared.
PARALLEL_MIN_WORK = 1 << 18


def worth_parallel(work: int | None) -> bool:
    """Whether a kernel of `work` elements (None: unknown, symbolic) should run in parallel."""
    return work is None or work >= PARALLEL_MIN_WORK


# Rows of static extent that make a parallel loop of their own (`parallel_rows`).
PARALLEL_ROWS = 8


def parallel_rows(sch: Any, rows: list[Any]) -> tuple[Any, Any | None]:
    """The row loops fused into the loop to run in parallel, and the row loop left inside it.

    A symbolic last row axis after static ones of at least PARALLEL_ROWS rows (a softmax's or
    a transpose's [batch, heads, sequence]) stays a plain loop inside the parallel one over the
    others: fused with them, every row would find its place by divisions by the symbolic
    extent, dozens of cycles against a short row's work. Otherwise all rows are fused (None).
    """
    extents = [static_extent(sch, loop) for loop in rows]
    static = 1
    for extent in extents[:-1]:
        static *= extent or 1
    inner = rows[-1] if len(rows) > 1 and extents[-1] is None and static >= PARALLEL_ROWS else None
    outer = rows[:-1] if inner is not None else rows
    return (sch.fuse(*outer) if len(outer) > 1 else outer[0]), inner


def block_work(sch: Any, block: Any) -> int | None:
    """The product of the block's axis extents (None when one is symbolic)."""
    from tvm import tirx

    work = 1
    for iv in sch.get(block).iter_vars:
        if not isinstance(iv.dom.extent, tirx.IntImm):
            return None
        work *= int(iv.dom.extent.value)
    return work


def vector_bits(target: Any) -> int:
    """The width in bits of the float vector registers the target's code may use."""
    if target.kind.name != "llvm":
        return 128
    attrs = target.attrs
    triple = str(attrs.get("mtriple", ""))
    features = " ".join(str(a) for a in attrs.get("mattr", []))
    for feature, bits in _WIDTHS:
        if f"+{feature}" in features:
            return bits
    if triple.startswith(("aarch64", "arm")):
        return 128
    cpu = str(attrs.get("mcpu", ""))
    if cpu.startswith(_AVX512_CPUS):
        return 512
    if cpu.startswith(_AVX2_CPUS):
        return 256
    return 128


def vector_lanes(target: Any, dtype_bits: int) -> int:
    """How many elements of `dtype_bits` bits one vector register holds (at least 2)."""
    return max(vector_bits(target) // max(dtype_bits, 8), 2)


def static_extent(sch: Any, loop: Any) -> int | None:
    """The loop's extent when it is a constant, else None."""
    from tvm import tirx

    extent = sch.get(loop).extent
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def extent_divisible(sch: Any, loop: Any, size: int) -> bool:
    """Whether the loop's extent, static or symbolic, is provably a multiple of `size`."""
    from tvm import sym, tirx

    extent = sch.get(loop).extent
    return bool(sym.Analyzer().can_prove(tirx.floormod(extent, size) == 0))


def split_vector(sch: Any, loop: Any, lanes: int) -> Any:
    """Vectorize `loop` by `lanes` (its whole length when shorter); returns the vector loop.

    A symbolic extent that is not whole vectors is marked to be cut in whole vectors and a
    tail once scheduled (`loops.vector_tails`): split, its last vector would be guarded, and a
    guard inside a vector loop makes TVM emit every lane on its own.
    """
    from nlpress.targets.schedules import loops

    extent = static_extent(sch, loop)
    if extent is None and not extent_divisible(sch, loop, lanes):
        loops.mark_vector_tail(sch, loop, lanes)
        return loop
    if extent is not None and extent <= lanes:
        if extent > 1:
            sch.vectorize(loop)
        return loop
    if extent is not None and extent % lanes:
        lanes = _largest_power_of_two_divisor(extent, lanes)
        if lanes < 2:
            return loop
    _, inner = sch.split(loop, factors=[None, lanes])
    sch.vectorize(inner)
    return inner


def largest_divisor(value: int, limit: int) -> int:
    """The largest divisor of `value` that is at most `limit` (at least 1)."""
    return max(d for d in range(1, max(min(value, limit), 1) + 1) if value % d == 0)


def _largest_power_of_two_divisor(extent: int, limit: int) -> int:
    """The largest power-of-two divisor of `extent` that is at most `limit`."""
    lanes = 1
    while lanes * 2 <= limit and extent % (lanes * 2) == 0:
        lanes *= 2
    return lanes


def inline_intermediates(sch: Any, *keep: Any) -> None:
    """Inline every block but those in `keep` and the outputs into its readers, where it can be."""
    from tvm.s_tir.dlight.analysis import get_root_block

    outputs = {sch.get(b) for b in sch.get_output_blocks(get_root_block(sch))}
    kept = [sch.get(k) for k in keep if k is not None]
    for block in sch.get_child_blocks(get_root_block(sch)):
        stmt = sch.get(block)
        if stmt in outputs or any(stmt.same_as(k) for k in kept):
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # a block that cannot be inlined stays a block
            continue


def inline_producers(sch: Any, block: Any, keep: Any = None) -> None:
    """Inline every injective producer of `block` but `keep` that can be inlined, transitively."""
    kept = None if keep is None else sch.get(keep).name_hint

    def producers() -> list[Any]:
        return [p for p in sch.get_producers(block) if sch.get(p).name_hint != kept]

    _inline_until_fixed(producers, sch.compute_inline)


def inline_consumers(sch: Any, block: Any) -> bool:
    """Inline every consumer chain of `block` into it; returns whether none is left."""
    _inline_until_fixed(lambda: sch.get_consumers(block), sch.reverse_compute_inline)
    return not sch.get_consumers(block)


def _inline_until_fixed(neighbours: Callable[[], Any], inline: Callable[[Any], None]) -> None:
    """Inline the neighbours `neighbours()` returns, again and again, until none can be."""
    while True:
        inlined = 0
        for neighbour in neighbours():
            try:
                inline(neighbour)
                inlined += 1
            except Exception:  # a block that cannot be inlined stays a block
                continue
        if not inlined:
            return


def write_back_tile(sch: Any, main: Any, tile_loop: Any, target: Any, lanes: int) -> None:
    """Accumulate each tile locally; store it through the epilogue at the tile loop.

    The store is vectorized by `lanes` columns, its rows and vectors unrolled.
    """
    from nlpress.targets.schedules.elementwise import schedule_block

    write_back = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(write_back, tile_loop, preserve_unit_loops=True)
    inlined = inline_consumers(sch, write_back)
    *_, rows, columns = sch.get_loops(write_back)
    blocks, vector = sch.split(columns, factors=[None, lanes])
    sch.vectorize(vector)
    sch.unroll(blocks)
    sch.unroll(rows)
    if inlined:
        return
    # A consumer that could not be inlined (the slice of padded columns): stored after.
    for store in sch.get_consumers(write_back):
        inline_consumers(sch, store)
        schedule_block(sch, store, target)
