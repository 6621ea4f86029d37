"""nlpress's CPU legalization: isnan as an exact bit test."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.runtime.vm import VirtualMachine

from nlpress.targets import get_target, lower
from nlpress.targets.legalize import legalize_passes

HOST = lower.tvm_target(get_target("x86"))


def _isnan_module(dtype: str, size: int) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((size,), dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.isnan(x))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_isnan_is_exact_on_every_kind_of_value(dtype: str) -> None:
    info = np.finfo(dtype)
    values = np.array(
        [0.0, -0.0, 1.5, -2.0, info.max, -info.max, info.tiny, info.tiny / 4, np.inf, -np.inf],
        dtype,
    )
    nans = np.array([np.nan, -np.nan], dtype)
    quiet_and_signalling = nans.view(f"uint{info.bits}").copy()
    quiet_and_signalling[1] = quiet_and_signalling[0] ^ (1 << (info.nmant - 1)) | 1  # signalling
    values = np.concatenate([values, nans, quiet_and_signalling.view(dtype), -nans])
    mod = _isnan_module(dtype, values.size)
    with HOST:
        mod = tvm.transform.Sequential(legalize_passes(HOST))(mod)
    script = mod.script()
    assert "T.reinterpret" in script and "T.isnan" not in script
    vm = VirtualMachine(tvm.compile(mod, HOST), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(values)).numpy()
    np.testing.assert_array_equal(got, np.isnan(values))
