"""Integer matmul kernel families: the packed weight block and the instruction that multiplies it.

The integer matmul kernel (`targets/quantized.py`) sums uint8 activations times int8 weights in
int32, over a weight packed in blocks of `n` columns x `k` reduction steps. One block is one
step of the inner loop, tensorized with the target's instruction (table `FAMILIES`, best
first):

| family | block | instruction | activations |
|---|---|---|---|
| avx512-vnni | 16 x 4 | vpdpbusd zmm: 16 int32 += 4 u8 x s8 each | as they are |
| avx-vnni | 8 x 4 | vpdpbusd ymm (VEX) | as they are |
| avx2 | 8 x 2 | vpmovsxbw + vpmaddwd ymm: 8 int32 += 2 s16 x s16 each | stored as int16 |
| neon-i8mm | 16 x 4 | four usdot: 4 int32 += 4 u8 x s8 each | as they are |
| neon-dotprod | 16 x 4 | four sdot: 4 int32 += 4 s8 x s8 each | shifted by -128 |
| neon | 8 x 2 | smull + sadalp: 8 s16 products, pairs added into 4 int32 | shifted by -128 |

Every family is exact against the int32 sum. AVX2's vpmaddubsw (u8 x s8 pairs summed in
int16, with saturation) is not: 255 * 127 * 2 = 64770 > 32767, so a pair of large activations
and large weights of one sign would clip. vpmaddwd takes int16 operands, whose pair sums reach
2 * 255 * 128 = 65280 in int32, and it issues on the same ports as vpmaddubsw, so widening costs
no multiply throughput. Its activations are written as int16 by the kernel that quantizes them,
so that one vpbroadcastd loads each pair; the weights stay int8 and are widened as they are
loaded. NEON's `sdot`, `smull` (and CUDA's `__dp4a`) multiply int8 by int8 only,
so those kernels take activations shifted into int8 (`a - 128`, one `eor` of the broadcast
bytes) and a zero point lowered by the same 128, which keeps the result exact:
sum((a - 128) w) - (zp - 128) colsum(w) == sum(a w) - zp colsum(w).

TVM's own `dot_16x4_vnni` describes its buffers with int32 indices and does not match the
int64-indexed blocks that legalization produces, and passes vpdpbusd's byte operands as
<16 x i32>, which the LLVM of TVM 0.27 (typed <64 x i8> since LLVM 20) rejects, so nlpress
registers its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The shift that moves uint8 activations into int8's range for sdot, smull and __dp4a.
SDOT_OFFSET = 128


@dataclass(frozen=True)
class Int8Kernel:
    """One family of integer matmul kernels.

    Attributes:
        family: Its name, recorded in the manifest (e.g. "avx2").
        arch: "x86" or "aarch64"; None for the generic family.
        features: The LLVM target features it needs, all of them.
        block: (columns, reduction steps) of one packed weight block.
        activation_offset: What the kernel subtracts from each uint8 activation (0: none).
        instruction: The instruction one block becomes (None: plain vector code).
        activation_dtype: How the kernel reads the uint8 activations: "uint8", or "int16"
            (zero-extended by the kernel that quantizes them).

    """

    family: str
    arch: str | None
    features: tuple[str, ...]
    block: tuple[int, int]
    activation_offset: int
    instruction: str | None
    activation_dtype: str = "uint8"

    @property
    def intrinsic(self) -> str | None:
        """The TensorIntrin name of one block (registered on first use), None for vector code."""
        if self.instruction is None:
            return None
        _register()
        return f"nlpress_int8_{self.family.replace('-', '_')}"


FAMILIES = (
    Int8Kernel("avx512-vnni", "x86", ("avx512vnni",), (16, 4), 0, "vpdpbusd"),
    Int8Kernel("avx-vnni", "x86", ("avxvnni",), (8, 4), 0, "vpdpbusd"),
    Int8Kernel("avx2", "x86", ("avx2",), (8, 2), 0, "vpmaddwd", "int16"),
    Int8Kernel("neon-i8mm", "aarch64", ("i8mm",), (16, 4), 0, "usdot"),
    Int8Kernel("neon-dotprod", "aarch64", ("dotprod",), (16, 4), SDOT_OFFSET, "sdot"),
    Int8Kernel("neon", "aarch64", ("neon",), (8, 2), SDOT_OFFSET, "smull"),
)
# Targets none of the families fits (x86 before AVX2): the same blocks, vectorized plainly.
GENERIC = Int8Kernel("generic", None, (), (16, 4), 0, None)


def int8_kernel(target: Any) -> Int8Kernel:
    """The best integer matmul family for a TVM target (GENERIC when none fits)."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return GENERIC
    arch = "aarch64" if str(target.attrs.get("mtriple", "")).startswith("aarch64") else "x86"
    for kernel in FAMILIES:
        if kernel.arch == arch and all(
            codegen.target_has_features(f, target) for f in kernel.features
        ):
            return kernel
    return GENERIC


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
def _register() -> None:
    """Register every family's block intrinsic (int64 indices, as Relax kernels have)."""
    from tvm.s_tir import TensorIntrin

    for kernel in FAMILIES:
        build = _IMPLEMENTATIONS[kernel.family]
        desc = _description(kernel)
        name = f"nlpress_int8_{kernel.family.replace('-', '_')}"
        TensorIntrin.register(name, desc, build(kernel), override=True)


def _operand(kernel: Int8Kernel, name: str) -> Any:
    """The TIR type of one block operand: A[k] (uint8 or int16), B[n, k] int8, C[n] int32."""
    from tvm.script import tirx as T

    n, k = (T.int64(d) for d in kernel.block)
    if name == "A":
        return T.Buffer((k,), kernel.activation_dtype, offset_factor=1)
    if name == "B":
        return T.Buffer((n, k), "int8", offset_factor=1)
    return T.Buffer((n,), "int32", offset_factor=1, scope="local")


def _description(kernel: Int8Kernel) -> Any:
    """C[i] += (int32(A[j]) - offset) * int32(B[i, j]) over one n x k block (offset 0: no Sub)."""
    from tvm.script import tirx as T

    (n, k), offset = kernel.block, kernel.activation_offset
    _0, _k, _n = T.int64(0), T.int64(k), T.int64(n)

    def activation(value: Any) -> Any:
        return value - offset if offset else value

    @T.prim_func(s_tir=True)  # type: ignore[untyped-decorator]
    def desc(
        A: _operand(kernel, "A"),  # type: ignore[valid-type]
        B: _operand(kernel, "B"),  # type: ignore[valid-type]
        C: _operand(kernel, "C"),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[_0:_n], A[_0:_k], B[_0:_n, _0:_k])
            T.writes(C[_0:_n])
            for i, j in T.grid(_n, _k):
                with T.sblock("update"):
                    vi, vj = T.axis.remap("SR", [i, j])
                    C[vi] = C[vi] + activation(T.Cast("int32", A[vj])) * T.Cast("int32", B[vi, vj])

    return desc


def _implementation(kernel: Int8Kernel, lanes: int, value: Callable[..., Any]) -> Any:
    """A block's body: C[at : at + lanes] = value(A, B, C, at) for each vector of C."""
    from tvm.script import tirx as T

    n, k = kernel.block
    _0, _k, _n, _lanes = T.int64(0), T.int64(k), T.int64(n), T.int64(lanes)

    @T.prim_func(s_tir=True)  # type: ignore[untyped-decorator]
    def impl(
        A: _operand(kernel, "A"),  # type: ignore[valid-type]
        B: _operand(kernel, "B"),  # type: ignore[valid-type]
        C: _operand(kernel, "C"),  # type: ignore[valid-type]
    ) -> None:
        with T.sblock("root"):
            T.reads(C[_0:_n], A[_0:_k], B[_0:_n, _0:_k])
            T.writes(C[_0:_n])
            for q in T.unroll(n // lanes):
                C[T.ramp(T.int64(q) * _lanes, 1, lanes)] = value(A, B, C, T.int64(q) * _lanes)

    return impl


def _broadcast_word(A: Any, k: int, words: int, dtype: str) -> Any:
    """The k activation bytes as one word, in each of `words` words, viewed as `dtype`."""
    from tvm.script import tirx as T

    word = T.reinterpret(A.vload([T.int64(0)], f"uint8x{k}"), dtype=f"int{8 * k}")
    return T.reinterpret(T.broadcast(word, words), dtype=dtype)


def _flipped(A: Any, k: int, words: int, dtype: str) -> Any:
    """The activation bytes with their top bit flipped (a - 128 as int8), broadcast."""
    from tvm.script import tirx as T

    word = _broadcast_word(A, k, words, dtype)
    return T.bitwise_xor(word, T.broadcast(T.int8(-128), words * k))


def _vpdpbusd(kernel: Int8Kernel) -> Any:
    """One vpdpbusd: n int32 sums of 4 uint8 x int8 products, the activation word broadcast."""
    from tvm.script import tirx as T

    n, k = kernel.block
    name = f"llvm.x86.avx512.vpdpbusd.{n * 32}"

    def value(A: Any, B: Any, C: Any, at: Any) -> Any:
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(name),
            C.vload([at], dtype=f"int32x{n}"),
            _broadcast_word(A, k, n, f"int8x{n * k}"),
            B.vload([at, T.int64(0)], f"int8x{n * k}"),
            dtype=f"int32x{n}",
        )

    return _implementation(kernel, n, value)


def _vpmaddwd(kernel: Int8Kernel) -> Any:
    """One vpmaddwd of the int16 activation pair and the sign-extended n x 2 weights."""
    from tvm.script import tirx as T

    n, k = kernel.block

    def value(A: Any, B: Any, C: Any, at: Any) -> Any:
        pair = T.reinterpret(A.vload([T.int64(0)], "int16x2"), dtype="int32")
        products = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.reinterpret(T.broadcast(pair, n), dtype=f"int16x{n * k}"),
            T.Cast(f"int16x{n * k}", B.vload([at, T.int64(0)], f"int8x{n * k}")),
            dtype=f"int32x{n}",
        )
        return C.vload([at], dtype=f"int32x{n}") + products

    return _implementation(kernel, n, value)


def _neon_dot(kind: str) -> Callable[[Int8Kernel], Any]:
    """Four 4-lane sdot/usdot of the broadcast activation word (flipped for sdot)."""
    from tvm.script import tirx as T

    name = f"llvm.aarch64.neon.{kind}.v4i32.v16i8"

    def build(kernel: Int8Kernel) -> Any:
        k = kernel.block[1]

        def value(A: Any, B: Any, C: Any, at: Any) -> Any:
            a = _broadcast_word(A, k, 4, "uint8x16") if kind == "usdot" else None
            return T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(name),
                C.vload([at], dtype="int32x4"),
                a if a is not None else _flipped(A, k, 4, "int8x16"),
                B.vload([at, T.int64(0)], "int8x16"),
                dtype="int32x4",
            )

        return _implementation(kernel, 4, value)

    return build


def _smull(kernel: Int8Kernel) -> Any:
    """One smull of the flipped activation pair and 4 x 2 weights, pairs added into 4 int32."""
    from tvm.script import tirx as T

    k = kernel.block[1]

    def value(A: Any, B: Any, C: Any, at: Any) -> Any:
        products = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
            _flipped(A, k, 4, "int8x8"),
            B.vload([at, T.int64(0)], "int8x8"),
            dtype="int16x8",
        )
        pairs = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
            products,
            dtype="int32x4",
        )
        return C.vload([at], dtype="int32x4") + pairs

    return _implementation(kernel, 4, value)


_IMPLEMENTATIONS: dict[str, Callable[[Int8Kernel], Any]] = {
    "avx512-vnni": _vpdpbusd,
    "avx-vnni": _vpdpbusd,
    "avx2": _vpmaddwd,
    "neon-i8mm": _neon_dot("usdot"),
    "neon-dotprod": _neon_dot("sdot"),
    "neon": _smull,
}


def fits(block: Any, kernel: Int8Kernel) -> bool:
    """Whether the reduction block reads and offsets its activation as `kernel` expects."""
    dtypes = {str(r.source.dtype) for r in block.reads}
    offset = block_activation_offset(block) == kernel.activation_offset
    return offset and kernel.activation_dtype in dtypes


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
