"""Register tiles stay on the stack: no workspace call per tile, and the same results."""

from __future__ import annotations

import re

import numpy as np
import tvm
from tvm import te

from nlpress.targets import get_target, lower, stack_tiles
from nlpress.targets.schedules import Matmul

HOST = lower.tvm_target(get_target("x86"))


def _attention_scores() -> tvm.tirx.PrimFunc:
    """Q K^T over a symbolic sequence: the kernel whose tiles TVM sent to its workspace pool."""
    s = tvm.tirx.Var("S", "int32")
    q = te.placeholder((2, s, 32), name="q")
    k = te.placeholder((2, 32, s), name="k")
    r = te.reduce_axis((0, 32), name="r")
    scores = te.compute((2, s, s), lambda b, i, j: te.sum(q[b, i, r] * k[b, r, j], axis=r))
    func = te.create_prim_func([q, k, scores]).with_attr("global_symbol", "main")
    sch = Matmul().apply(func, HOST, False)
    assert sch is not None
    return sch.mod


def _tile_workspace_calls(pipeline: str) -> list[str]:
    """The constant byte counts that the kernel asks of TVMBackendAllocWorkspace."""
    library = tvm.tirx.build(_attention_scores(), target=HOST, pipeline=pipeline)
    source = library.inspect_source("ll")
    return re.findall(r"call ptr %\d+\(i32 1, i32 %dev_id, i64 (\d+)", source)


def test_the_register_tile_leaves_the_workspace_pool() -> None:
    assert _tile_workspace_calls("default"), "TVM no longer pools the tile: drop the pass"
    assert _tile_workspace_calls(stack_tiles.pipeline_for(HOST)) == []


def test_a_kernel_with_stack_tiles_computes_the_same() -> None:
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 37, 32), "float32"), rng.standard_normal((2, 32, 37), "float32")
    pipeline = stack_tiles.pipeline_for(HOST)
    library = tvm.compile(_attention_scores(), target=HOST, tir_pipeline=pipeline)
    out = tvm.runtime.tensor(np.zeros((2, 37, 37), "float32"))
    library["main"](tvm.runtime.tensor(q), tvm.runtime.tensor(k), out)
    np.testing.assert_allclose(out.numpy(), q @ k, rtol=1e-5, atol=1e-4)
