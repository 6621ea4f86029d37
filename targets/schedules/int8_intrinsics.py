"""Dot-product intrinsics: C[16] += (A[4] - c) . W[16, 4] by vpdpbusd or NEON sdot/usdot; __dp4a.

On x86 with AVX-512 VNNI, `vpdpbusd` multiplies uint8 by int8 as the kernel has them; TVM's own
`dot_16x4_vnni` describes its buffers with int32 indices and does not match the int64-indexed
blocks that legalization produces, and passes vpdpbusd's byte operands as <16 x i32>, which the
LLVM of TVM 0.27 (typed <64 x i8> since LLVM 20) rejects, so nlpress registers its own.

The integer matmul kernel (`targets/quantized.py`) accumulates uint8 activations times int8
weights. NEON's `sdot` multiplies int8 by int8 only, so for a +dotprod target the kernel is
built with its activations shifted into int8 (`a - 128`, one `eor` of the broadcast bytes per
16x4 block) and its zero point lowered by the same 128, which keeps the result exact:
sum((a - 128) w) - (zp - 128) colsum(w) == sum(a w) - zp colsum(w). With +i8mm, `usdot`
multiplies uint8 by int8 directly and nothing is shifted. One 16x4 block is four 4-lane dot
products (a 128-bit register holds four int32 columns). CUDA's `__dp4a` takes the same shift:
its int8 x int8 form sums four products of an activation word XOR 0x80808080 and a weight word.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

# The shift that moves uint8 activations into int8's range for sdot.
SDOT_OFFSET = 128


@dataclass(frozen=True)
class DotIntrinsic:
    """A registered 16x4 tensor intrinsic and the activation offset its description expects.

    Attributes:
        name: The TensorIntrin name.
        activation_offset: What the kernel subtracts from each uint8 activation before the
            product (0: none).

    """

    name: str
    activation_offset: int


def arm_dot_intrinsic(target: Any) -> DotIntrinsic | None:
    """The ARM dot-product intrinsic of an aarch64 target: usdot with +i8mm, sdot with +dotprod."""
    from tvm.target import codegen

    if target.kind.name != "llvm" or not str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return None
    if codegen.target_has_features("i8mm", target):
        return _register()["usdot"]
    if codegen.target_has_features("dotprod", target):
        return _register()["sdot"]
    return None


def x86_dot_intrinsic() -> DotIntrinsic:
    """The AVX-512 VNNI 16x4 intrinsic (registered on first use)."""
    return _register()["vpdpbusd"]


def activation_offset(target: Any) -> int:
    """The offset the target's integer matmul kernels subtract from uint8 activations."""
    intrinsic = arm_dot_intrinsic(target)
    return 0 if intrinsic is None else intrinsic.activation_offset


def block_activation_offset(block: Any) -> int | None:
    """The offset a kernel's reduction block subtracts from its activation, None if unknown.

    The block computes C = C + cast(A) * cast(W) (offset 0) or C + (cast(A) - c) * cast(W).
    """
    from tvm import tirx

    value = getattr(block.body, "value", None)
    product = value.b if isinstance(value, tirx.Add) else None
    if not isinstance(product, tirx.Mul):
        return None
    for side in (product.a, product.b):
        if isinstance(side, tirx.Sub) and isinstance(side.b, tirx.IntImm):
            return int(side.b.value)
    return 0


@functools.cache
def _register() -> dict[str, DotIntrinsic]:
    """Register the 16x4 intrinsics (int64 indices, as Relax kernels have); by instruction."""
    from tvm.s_tir import TensorIntrin

    made = {
        "vpdpbusd": DotIntrinsic("nlpress_dot_16x4_u8i8i32_avx512vnni", 0),
        "sdot": DotIntrinsic("nlpress_dot_16x4_u8i8i32_neon_sdot", SDOT_OFFSET),
        "usdot": DotIntrinsic("nlpress_dot_16x4_u8i8i32_neon_usdot", 0),
    }
    for kind, intrinsic in made.items():
        desc = _description(intrinsic.activation_offset)
        TensorIntrin.register(intrinsic.name, desc, _implementation(kind), override=True)
    return made


def _description(offset: int) -> Any:
    """C[i] += (int32(A[k]) - offset) * int32(B[i, k]) over a 16x4 block (no offset: no Sub)."""
    from tvm.script import tirx as T

    _0, _4, _16 = T.int64(0), T.int64(4), T.int64(16)

    def activation(value: Any) -> Any:
        return value - offset if offset else value

    @T.prim_func(s_tir=True)  # type: ignore[untyped-decorator]
    def desc(
        A: T.Buffer((T.int64(4),), "uint8", offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((T.int64(16), T.int64(4)), "int8", offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((T.int64(16),), "int32", offset_factor=1, scope="local"),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[_0:_16], A[_0:_4], B[_0:_16, _0:_4])
            T.writes(C[_0:_16])
            for i, k in T.grid(T.int64(16), T.int64(4)):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + activation(T.Cast("int32", A[vk])) * T.Cast("int32", B[vi, vk])

    return desc


def _implementation(kind: str) -> Any:
    """The instruction's body: one vpdpbusd, or four NEON 4-lane dot products."""
    return _vnni() if kind == "vpdpbusd" else _neon(kind)


def _vnni() -> Any:
    """One vpdpbusd: 16 int32 sums of 4 uint8 x int8 products, the activation broadcast."""
    from tvm.script import tirx as T

    _0, _4, _16 = T.int64(0), T.int64(4), T.int64(16)

    @T.prim_func(s_tir=True)  # type: ignore[untyped-decorator]
    def vnni(
        A: T.Buffer((T.int64(4),), "uint8", offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((T.int64(16), T.int64(4)), "int8", offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((T.int64(16),), "int32", offset_factor=1, scope="local"),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[_0:_16], A[_0:_4], B[_0:_16, _0:_4])
            T.writes(C[_0:_16])
            a = T.reinterpret(A.vload([_0], "uint8x4"), dtype="int32")
            C[T.ramp(_0, 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([_0], dtype="int32x16"),
                T.reinterpret(T.broadcast(a, 16), dtype="int8x64"),
                B.vload([_0, _0], "int8x64"),
                dtype="int32x16",
            )

    return vnni


def _neon(kind: str) -> Any:
    """Four 4-lane dot products over the broadcast activation bytes (shifted for sdot)."""
    from tvm.script import tirx as T

    _0, _4, _16 = T.int64(0), T.int64(4), T.int64(16)
    name = f"llvm.aarch64.neon.{kind}.v4i32.v16i8"

    def activation(a: Any) -> Any:
        # The four activation bytes in every 32-bit lane; flipping the top bit is a - 128.
        if kind == "usdot":
            return T.reinterpret(T.broadcast(a, 4), dtype="uint8x16")
        flipped = T.bitwise_xor(
            T.reinterpret(T.broadcast(a, 4), dtype="int8x16"),
            T.broadcast(T.int8(-128), 16),
        )
        return flipped

    @T.prim_func(s_tir=True)  # type: ignore[untyped-decorator]
    def impl(
        A: T.Buffer((T.int64(4),), "uint8", offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((T.int64(16), T.int64(4)), "int8", offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((T.int64(16),), "int32", offset_factor=1, scope="local"),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[_0:_16], A[_0:_4], B[_0:_16, _0:_4])
            T.writes(C[_0:_16])
            a = activation(T.reinterpret(A.vload([_0], "uint8x4"), dtype="int32"))
            for q in T.unroll(4):
                C[T.ramp(T.int64(q) * _4, 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(name),
                    C.vload([T.int64(q) * _4], dtype="int32x4"),
                    a,
                    B.vload([T.int64(q) * _4, _0], "int8x16"),
                    dtype="int32x4",
                )

    return impl


def fits(block: Any, intrinsic: str | None) -> bool:
    """Whether the reduction block subtracts the activation offset that `intrinsic` expects."""
    if intrinsic is None:
        return True
    expected = next((i.activation_offset for i in _register().values() if i.name == intrinsic), 0)
    return block_activation_offset(block) == expected


DP4A = "nlpress_dot_4_u8i8i32_cuda_dp4a"
# 0x80808080 as int32: flips the top bit of each of four bytes, a - 128 for each.
_FLIP_BYTES = -0x7F7F7F80


@functools.cache
def dp4a_intrinsic() -> str:
    """Register C[0] += sum((int32(A[k]) - 128) * int32(B[k]), k < 4) as one __dp4a; its name."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    _0, _4 = T.int64(0), T.int64(4)

    @T.prim_func(s_tir=True)  # type: ignore[untyped-decorator]
    def desc(
        A: T.Buffer((T.int64(4),), "uint8", offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((T.int64(4),), "int8", offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((T.int64(1),), "int32", offset_factor=1, scope="local"),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[_0], A[_0:_4], B[_0:_4])
            T.writes(C[_0])
            for k in T.serial(T.int64(4)):
                with T.sblock("update"):
                    vk = T.axis.remap("R", [k])
                    C[_0] = C[_0] + (T.Cast("int32", A[vk]) - SDOT_OFFSET) * T.Cast("int32", B[vk])

    @T.prim_func(s_tir=True)  # type: ignore[untyped-decorator]
    def impl(
        A: T.Buffer((T.int64(4),), "uint8", offset_factor=1),  # type: ignore[valid-type]
        B: T.Buffer((T.int64(4),), "int8", offset_factor=1),  # type: ignore[valid-type]
        C: T.Buffer((T.int64(1),), "int32", offset_factor=1, scope="local"),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[_0], A[_0:_4], B[_0:_4])
            T.writes(C[_0])
            a = T.reinterpret(A.vload([_0], "uint8x4"), dtype="int32")
            C[_0] = T.call_pure_extern(
                "__dp4a",
                T.bitwise_xor(a, T.int32(_FLIP_BYTES)),
                T.reinterpret(B.vload([_0], "int8x4"), dtype="int32"),
                C[_0],
                dtype="int32",
            )

    TensorIntrin.register(DP4A, desc, impl, override=True)
    return DP4A
