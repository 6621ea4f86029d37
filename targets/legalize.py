"""CPU legalization: TVM's, with isnan lowered to a bit test that vectorizes.

TVM legalizes `isnan` to the `tir.isnan` intrinsic, which its loop vectorizer cannot widen: a
vectorized loop over it comes out of LLVM as gathers and scatters of single lanes. The
`Where(IsNaN(Softmax(x)), 0, Softmax(x))` that PyTorch's attention export puts after every
softmax then runs one lane at a time. Here isnan(x) is the exact IEEE test on the
bits instead, (bits(x) & ~sign) > bits(+inf) (the exponent all ones and the mantissa nonzero),
plain integer lanes that vectorize and that no fast-math flag can fold away.
"""

from __future__ import annotations

from typing import Any

# float dtype -> (integer dtype of the same width, mask without the sign bit, bits of +inf)
_IEEE_BITS = {
    "float16": ("int16", 0x7FFF, 0x7C00),
    "bfloat16": ("int16", 0x7FFF, 0x7F80),
    "float32": ("int32", 0x7FFFFFFF, 0x7F800000),
    "float64": ("int64", 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000),
}


def legalize_passes(tvm_target: Any) -> list[Any]:
    """TVM's CPU legalization passes, with `isnan` legalized by `isnan_bits`."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    passes = list(cpu.legalize_passes(tvm_target))
    custom = relax.transform.LegalizeOps({"relax.isnan": isnan_bits})
    return [custom if _is_legalize_ops(p) else p for p in passes]


def _is_legalize_ops(transform: Any) -> bool:
    return str(transform.info.name) == "LegalizeOps"


def isnan_bits(bb: Any, call: Any) -> Any:
    """Legalize relax.isnan on an IEEE float tensor as a bit test (TVM's own for other dtypes)."""
    import tvm
    from tvm import te, tirx

    dtype = str(call.args[0].ty.dtype)
    if dtype not in _IEEE_BITS:
        return tvm.ir.Op.get("relax.isnan").get_attr("FLegalize")(bb, call)
    bits, magnitude, infinity = _IEEE_BITS[dtype]

    def isnan(x: te.Tensor) -> te.Tensor:
        def test(*index: Any) -> Any:
            value = tirx.reinterpret(bits, x(*index)) & tirx.const(magnitude, bits)
            return value > tirx.const(infinity, bits)

        return te.compute(x.shape, test, name="isnan_bits")

    return bb.call_te(isnan, call.args[0], primfunc_name_hint="isnan")
