"""CUDA integer matmul rule: C[..., n] += (u8 A[..., k] - 128) * s8 W^T[n, k], four k per __dp4a.

It takes the GPU form of the kernels of `targets/quantized.py` (a transposed weight, so each
column's k runs contiguous, and activations shifted by 128 into int8, the zero point with
them). Each thread block computes a (TY * TM) x (TX * TN) tile of C; each thread TM x TN
consecutive outputs. The reduction runs in steps of four, each one __dp4a on a
register accumulator; the epilogue (zero-point correction, scales, bias, fused consumers) is
applied as each thread stores its outputs. Rows and columns that do not fill a tile are
guarded.
"""

from __future__ import annotations

import logging
from typing import Any

from nlpress.targets.schedules import common, int8_intrinsics

log = logging.getLogger(__name__)

# Threads per block (x: columns, y: rows) and outputs per thread (rows, columns).
TX, TY = 16, 8
TM, TN = 4, 4
STEP = 4  # bytes of k per __dp4a


class Int8Dp4a:
    """Schedule rule (dlight protocol) for the CUDA integer matmul kernels of QDQ MatMuls."""

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        """A schedule of `func`, or None when it is not a shifted integer matmul over W^T."""
        from tvm import s_tir

        if target.kind.name != "cuda":
            return None
        sch = s_tir.Schedule(func)
        main = _dp4a_block(sch)
        if main is None:
            return None
        common.inline_intermediates(sch, main)
        _tile(sch, main)
        return sch


def cuda_pipeline(tvm_target: Any) -> Any:
    """TVM's CUDA Relax pipeline with QDQ MatMuls as __dp4a kernels scheduled by `Int8Dp4a`.

    The QDQ rewrite emits the transposed, shifted kernel; the rule runs right before dlight's
    default GPU rules, which skip the kernels it scheduled.
    """
    import tvm
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight

    from nlpress.targets import quantized

    @tvm.transform.module_pass(opt_level=0, name="NlpressCudaPipeline")  # type: ignore[untyped-decorator]
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        legalize = list(cuda.legalize_passes(tvm_target))
        at = next(
            (i for i, p in enumerate(legalize) if p.info.name == "ApplyDefaultSchedule"),
            len(legalize),
        )
        legalize.insert(at, dlight.ApplyDefaultSchedule(Int8Dp4a()))
        rewrite = quantized.qdq_matmul_pass(
            activation_offset=int8_intrinsics.SDOT_OFFSET, transposed=True
        )
        with tvm_target:
            return tvm.transform.Sequential(
                [
                    rewrite,
                    *cuda.library_dispatch_passes(tvm_target),
                    *legalize,
                    *cuda.dataflow_lower_passes(tvm_target),
                    *cuda.finalize_passes(tvm_target),
                ]
            )(mod)

    return _pipeline


def _dp4a_block(sch: Any) -> Any:
    """The single reduction block C[..., j] += (u8 A[..., k] - 128) * s8 W[j, k], else None."""
    from nlpress.targets.schedules.int8 import integer_reduction

    found = integer_reduction(sch)
    if found is None:
        return None
    block, weight = found
    if len(weight.shape) != 2 or int8_intrinsics.block_activation_offset(sch.get(block)) != 128:
        return None
    loops = sch.get_loops(block)
    depth = common.static_extent(sch, loops[-1])
    if len(loops) not in (3, 4) or depth is None or depth % STEP:
        return None
    return block


def _tile(sch: Any, main: Any) -> None:
    """Bind tiles to blocks and threads, accumulate in registers, one __dp4a per 4 of k.

    The batch axis (if any) goes to blockIdx.z unfused: fused row axes make the block's
    bindings non-affine, which tensorization cannot split. Tiles divide the rows and columns
    exactly (a symbolic row count gets one row per block): TVM 0.27 cannot tensorize a block
    under a bounds guard.
    """
    *lead, row, j, k = sch.get_loops(main)
    rows, columns = common.static_extent(sch, row), common.static_extent(sch, j)
    assert columns is not None
    (ty, tm), (tx, tn) = _divisors(rows, TY, TM), _divisors(columns, TX, TN)
    bi, ty, ti = sch.split(row, factors=[None, ty, tm])
    bj, tx, tj = sch.split(j, factors=[None, tx, tn])
    ko, ki = sch.split(k, factors=[None, STEP])
    sch.reorder(*lead, bi, bj, ty, tx, ko, ti, tj, ki)
    if lead:
        sch.bind(lead[0], "blockIdx.z")
    sch.bind(bi, "blockIdx.y")
    sch.bind(bj, "blockIdx.x")
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    write_back = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(write_back, tx, preserve_unit_loops=True)
    common.inline_consumers(sch, write_back)
    init = sch.decompose_reduction(main, ko)
    for loop in sch.get_loops(init)[-2:]:
        sch.unroll(loop)
    sch.tensorize(ki, int8_intrinsics.dp4a_intrinsic())
    sch.unroll(tj)
    sch.unroll(ti)


def _divisors(extent: int | None, threads: int, per_thread: int) -> tuple[int, int]:
    """(threads, outputs per thread) along one axis, both dividing `extent` (None: 1, 1)."""
    if extent is None:
        return 1, 1
    inner = common.largest_divisor(extent, per_thread)
    return common.largest_divisor(extent // inner, threads), inner
