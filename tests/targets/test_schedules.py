"""The default CPU schedules: each rule applies to its kernels and keeps them exact, odd shapes too.

Every kernel is built twice for this host, plain and scheduled, and run on the same seeded
inputs; results must match to float rounding (reductions may sum in another order).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tvm
from tvm import te, topi
from tvm.script import tirx as T

from nlpress.targets import get_target, lower, schedules, stack_tiles
from nlpress.targets.schedules import Elementwise, Matmul, RowReduction, common, loops, matmul
from nlpress.targets.softmax import row_softmax

HOST = lower.tvm_target(get_target("x86"))
ARM = lower.tvm_target(get_target("arm"))
AVX2 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"})
AVX512 = tvm.target.Target(
    {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}
)


def _func(build: Callable[[], list[te.Tensor]]) -> Any:
    return te.create_prim_func(build())


def _dense(m: int, k: int, n: int, epilogue: bool = True) -> list[te.Tensor]:
    x = te.placeholder((m, k), name="x")
    w = te.placeholder((k, n), name="w")
    b = te.placeholder((n,), name="b")
    r = te.reduce_axis((0, k), name="r")
    y = te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[r, j], axis=r), name="mm")
    if not epilogue:
        return [x, w, b, y]
    z = te.compute((m, n), lambda i, j: y[i, j] + b[j], name="bias")
    g = te.compute((m, n), lambda i, j: z[i, j] * (te.erf(z[i, j] * 0.7071) + 1.0) * 0.5)
    return [x, w, b, g]


def _dense_transposed(m: int, k: int, n: int) -> list[te.Tensor]:
    x = te.placeholder((m, k), name="x")
    w = te.placeholder((n, k), name="w")
    res = te.placeholder((m, n), name="res")
    r = te.reduce_axis((0, k), name="r")
    y = te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[j, r], axis=r), name="mm")
    return [x, w, res, te.compute((m, n), lambda i, j: y[i, j] + res[i, j], name="residual")]


def _batched(b: int, m: int, k: int, n: int) -> list[te.Tensor]:
    x = te.placeholder((1, b, m, k), name="x")
    y = te.placeholder((1, b, k, n), name="y")
    r = te.reduce_axis((0, k), name="r")
    out = te.compute(
        (1, b, m, n), lambda o, h, i, j: te.sum(x[o, h, i, r] * y[o, h, r, j], axis=r), name="bmm"
    )
    return [x, y, out]


def _symbolic_attention_scores() -> list[te.Tensor]:
    """Q @ K^T + mask with symbolic batch and sequence: partial tiles of unknown size."""
    batch, seq = te.var("batch", dtype="int64"), te.var("seq", dtype="int64")
    heads, depth = tvm.tirx.const(12, "int64"), tvm.tirx.const(32, "int64")
    q = te.placeholder((batch, heads, seq, depth), name="q")
    k = te.placeholder((batch, heads, depth, seq), name="k")
    mask = te.placeholder((batch, seq, seq), name="mask")
    r = te.reduce_axis((tvm.tirx.const(0, "int64"), depth), name="r")
    shape = (batch, heads, seq, seq)
    s = te.compute(shape, lambda b, h, i, j: te.sum(q[b, h, i, r] * k[b, h, r, j], axis=r))
    return [q, k, mask, te.compute(shape, lambda b, h, i, j: s[b, h, i, j] + mask[b, i, j])]


def _symbolic_probs_times_values() -> list[te.Tensor]:
    """P @ V with symbolic batch and sequence: symbolic rows and reduction, static columns."""
    batch, seq = te.var("batch", dtype="int64"), te.var("seq", dtype="int64")
    heads, depth = tvm.tirx.const(12, "int64"), tvm.tirx.const(32, "int64")
    p = te.placeholder((batch, heads, seq, seq), name="p")
    v = te.placeholder((batch, heads, seq, depth), name="v")
    r = te.reduce_axis((tvm.tirx.const(0, "int64"), seq), name="r")
    shape = (batch, heads, seq, depth)
    return [
        p,
        v,
        te.compute(shape, lambda b, h, i, j: te.sum(p[b, h, i, r] * v[b, h, r, j], axis=r)),
    ]


def _symbolic_transpose() -> list[te.Tensor]:
    """[batch, seq, heads, depth] -> [batch, heads, seq, depth], symbolic batch and sequence."""
    batch, seq = te.var("batch", dtype="int64"), te.var("seq", dtype="int64")
    x = te.placeholder((batch, seq, tvm.tirx.const(12, "int64"), tvm.tirx.const(32, "int64")))
    return [x, topi.transpose(x, (0, 2, 1, 3))]


def _softmax(rows: int, cols: int) -> list[te.Tensor]:
    x = te.placeholder((1, rows, cols), name="x")
    return [x, topi.nn.softmax(x, axis=-1)]


def _symbolic_softmax() -> list[te.Tensor]:
    batch, seq = te.var("batch", dtype="int64"), te.var("seq", dtype="int64")
    x = te.placeholder((batch, tvm.tirx.const(12, "int64"), seq, seq), name="x")
    return [x, topi.nn.fast_softmax(x, axis=-1)]


def _symbolic_row_softmax(lanes: int = 16) -> list[te.Tensor]:
    """nlpress's softmax over a symbolic row (targets/softmax.py), reduced in lane partials."""
    x = _symbolic_softmax()[0]
    return [x, row_softmax(x, lanes)]


def _layer_norm(rows: int, cols: int) -> list[te.Tensor]:
    x = te.placeholder((1, rows, cols), name="x")
    gamma = te.placeholder((cols,), name="gamma")
    beta = te.placeholder((cols,), name="beta")
    return [x, gamma, beta, topi.nn.layer_norm(x, gamma, beta, axis=[-1], epsilon=1e-12)]


def _transpose_add(a: int, b: int, c: int) -> list[te.Tensor]:
    x = te.placeholder((a, b, c), name="x")
    y = te.placeholder((b, a, c), name="y")
    t = topi.transpose(x, (1, 0, 2))
    return [x, y, te.compute((b, a, c), lambda i, j, k: t[i, j, k] + y[i, j, k] * 2.0)]


@T.prim_func(s_tir=True)
def _middle_sum(a: T.Buffer((5, 7, 9), "float32"), c: T.Buffer((5, 9), "float32")) -> None:
    for i, k, j in T.grid(5, 7, 9):
        with T.sblock("sum"):
            vi, vk, vj = T.axis.remap("SRS", [i, k, j])
            with T.init():
                c[vi, vj] = T.float32(0)
            c[vi, vj] = c[vi, vj] + a[vi, vk, vj]


def _run(func: Any, mod: Any, sizes: dict[str, int]) -> list[np.ndarray]:
    library = tvm.compile(mod, target=HOST, tir_pipeline=stack_tiles.pipeline_for(HOST))
    rng = np.random.default_rng(0)
    args = []
    for param in func.params:
        shape = [int(d) if isinstance(d, tvm.tirx.IntImm) else sizes[d.name] for d in param.shape]
        args.append(tvm.runtime.tensor(rng.standard_normal(shape).astype(str(param.dtype))))
    library["main"](*args)
    return [a.numpy() for a in args]


def _check(func: Any, rule: Any, target: Any = HOST, sizes: dict[str, int] | None = None) -> None:
    """The rule applies, and the scheduled kernel computes what the plain one does.

    Symbolic dims take their size from `sizes`, by name.
    """
    sizes = sizes or {}
    func = func.with_attr("global_symbol", "main")
    sch = rule.apply(func, target, False)
    assert sch is not None, f"{type(rule).__name__} did not apply"
    plain = _run(func, tvm.IRModule({"main": func}), sizes)
    if target is HOST:
        scheduled = _run(func, sch.mod, sizes)
        np.testing.assert_allclose(scheduled[-1], plain[-1], rtol=1e-5, atol=1e-5)
    else:  # another ISA: it must at least compile
        tvm.compile(sch.mod, target=target, tir_pipeline=stack_tiles.pipeline_for(target))


@pytest.mark.parametrize("shape", [(128, 384, 384), (7, 13, 19), (2, 40, 33), (50, 64, 48)])
def test_matmul_with_bias_and_gelu(shape: tuple[int, int, int]) -> None:
    _check(_func(lambda: _dense(*shape)), Matmul())


def test_matrix_vector_product_goes_to_the_row_rule() -> None:
    gemv = _func(lambda: _dense(1, 40, 33))
    assert Matmul().apply(gemv.with_attr("global_symbol", "main"), HOST, False) is None
    _check(gemv, RowReduction())


@pytest.mark.parametrize("shape", [(9, 17, 23), (32, 48, 64)])
def test_matmul_transposed_weights_and_residual(shape: tuple[int, int, int]) -> None:
    _check(_func(lambda: _dense_transposed(*shape)), Matmul())


@pytest.mark.parametrize("shape", [(12, 128, 32, 128), (3, 5, 11, 7), (2, 33, 17, 32)])
def test_batched_matmul_of_attention(shape: tuple[int, int, int, int]) -> None:
    _check(_func(lambda: _batched(*shape)), Matmul())


@pytest.mark.parametrize(("batch", "seq"), [(2, 40), (3, 77), (1, 1)])
def test_matmul_with_symbolic_rows_and_columns(batch: int, seq: int) -> None:
    _check(_func(_symbolic_attention_scores), Matmul(), sizes={"batch": batch, "seq": seq})


@pytest.mark.parametrize(("batch", "seq"), [(2, 40), (1, 3)])
def test_matmul_with_symbolic_rows_and_reduction(batch: int, seq: int) -> None:
    _check(_func(_symbolic_probs_times_values), Matmul(), sizes={"batch": batch, "seq": seq})


@pytest.mark.parametrize("build", [_symbolic_attention_scores, _symbolic_probs_times_values])
@pytest.mark.parametrize("target", [AVX512, AVX2, ARM], ids=["avx512", "avx2", "arm"])
def test_symbolic_matmuls_are_padded_to_whole_tiles(build: Any, target: Any) -> None:
    """No guard inside the reduction: each tile accumulates in registers."""
    sch = Matmul().apply(_func(build).with_attr("global_symbol", "main"), target, False)
    assert "pad" in sch.mod.script()
    assert _update_blocks(sch.mod.script())
    assert all("T.where" not in block for block in _update_blocks(sch.mod.script()))
    tvm.compile(sch.mod, target=target, tir_pipeline=stack_tiles.pipeline_for(target))


@pytest.mark.parametrize(
    ("build", "rule"),
    [
        (_symbolic_attention_scores, Matmul()),
        (_symbolic_probs_times_values, Matmul()),
        (_symbolic_softmax, RowReduction()),
        (_symbolic_row_softmax, RowReduction()),
        (_symbolic_transpose, Elementwise()),
    ],
    ids=["scores", "probs-values", "softmax", "row-softmax", "transpose"],
)
def test_no_vector_lane_over_a_symbolic_extent_is_guarded(build: Any, rule: Any) -> None:
    """A guard on the lanes of a vector loop makes TVM emit the lanes one by one."""
    sch = rule.apply(_func(build).with_attr("global_symbol", "main"), HOST, False)
    assert _lane_guards(sch.mod.script()) == []


def _lane_guards(script: str) -> list[str]:
    """The block predicates of a scheduled kernel that depend on a vector loop's variable."""
    guards, lane, depth = [], "", -1
    for line in script.splitlines():
        indent = len(line) - len(line.lstrip())
        if lane and indent <= depth:
            lane = ""
        if "in T.vectorized(" in line:
            lane, depth = line.split()[1], indent
        elif lane and "T.where(" in line and re.search(rf"\b{lane}\b", line):
            guards.append(line.strip())
    return guards


def _update_blocks(script: str) -> list[str]:
    """The text of each reduction update block of a scheduled kernel."""
    blocks = re.split(r"with T\.sblock\(", script)[1:]
    return [b for b in blocks if b.split('"')[1].endswith("_update")]


@pytest.mark.parametrize("shape", [(12, 128), (5, 37), (3, 48)])
def test_softmax(shape: tuple[int, int]) -> None:
    _check(_func(lambda: _softmax(*shape)), RowReduction())


@pytest.mark.parametrize(("rows", "cols", "parallel"), [(1536, 128, True), (64, 128, False)])
def test_a_softmax_runs_its_rows_in_parallel_by_the_work_of_all_its_passes(
    rows: int, cols: int, parallel: bool
) -> None:
    """Attention probabilities of one 128-token sentence: 196608 elements, under the parallel
    threshold for one pass, but max, exp, sum and divide each pass over them."""
    sch = RowReduction().apply(_func(lambda: _softmax(rows, cols)), HOST, False)
    assert ("T.parallel(" in sch.mod.script()) is parallel


@pytest.mark.parametrize(("batch", "seq"), [(2, 40), (1, 1), (1, 17)])
def test_softmax_over_a_symbolic_row(batch: int, seq: int) -> None:
    """A row of unknown length sums serially (split in vectors, compute_at drops their guard)."""
    _check(_func(_symbolic_softmax), RowReduction(), sizes={"batch": batch, "seq": seq})


@pytest.mark.parametrize(("batch", "seq"), [(2, 40), (1, 1), (1, 15), (1, 16), (1, 17), (1, 48)])
def test_row_softmax_is_tvms_fast_softmax(batch: int, seq: int) -> None:
    """Lane partials and a guarded tail, scheduled, compute fast_softmax: rows shorter than a
    vector, whole vectors with an empty tail, and both parts; the output is written in whole
    vectors, then a plain tail (`loops.vector_tails`)."""
    sizes = {"batch": batch, "seq": seq}
    func = _func(_symbolic_row_softmax).with_attr("global_symbol", "main")
    scheduled = loops.vector_tails(RowReduction().apply(func, HOST, False).mod["main"])
    script = scheduled.script()
    assert script.count("T.vectorized(") >= 3  # the max's and the sum's partials, the output
    assert _lane_guards(script) == []
    reference = _func(_symbolic_softmax).with_attr("global_symbol", "main")
    expected = _run(reference, tvm.IRModule({"main": reference}), sizes)[-1]
    got = _run(func, tvm.IRModule({"main": scheduled}), sizes)[-1]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@T.prim_func(s_tir=True)
def _add_in_place(a_handle: T.handle) -> None:
    n = T.int64()
    a = T.match_buffer(a_handle, (n,), "float32")
    for i in range(n):
        with T.sblock("add"):
            v = T.axis.spatial(n, i)
            a[v] = a[v] * T.float32(2) + T.float32(1)


@pytest.mark.parametrize("n", [5, 16, 21, 40])
def test_a_loop_that_rewrites_what_it_reads_gets_a_plain_tail(n: int) -> None:
    """Done twice, a[i] = 2 a[i] + 1 would differ: its tail is a plain loop, no last vector."""
    sch = tvm.s_tir.Schedule(_add_in_place.with_attr("global_symbol", "main"))
    loops.mark_vector_tail(sch, sch.get_loops(sch.get_sblock("add"))[0], 16)
    func = loops.vector_tails(sch.mod["main"])
    assert func.script().count("T.vectorized(") == 1
    library = tvm.compile(tvm.IRModule({"main": func}), target=HOST)
    a = np.arange(n, dtype=np.float32)
    got = tvm.runtime.tensor(a)
    library["main"](got)
    np.testing.assert_array_equal(got.numpy(), a * 2 + 1)


@pytest.mark.parametrize(
    ("build", "rule"),
    [(_symbolic_row_softmax, RowReduction()), (_symbolic_transpose, Elementwise())],
    ids=["softmax", "transpose"],
)
def test_rows_of_a_symbolic_length_run_in_a_loop_under_the_heads(build: Any, rule: Any) -> None:
    """[batch, 12, seq] rows: the parallel loop is over batch x heads, the rows a loop inside
    it, so that no row's place takes a division by the symbolic length."""
    func = _func(build).with_attr("global_symbol", "main")
    script = rule.apply(func, HOST, False).mod.script()
    parallel = re.search(r"in T\.parallel\((.*)\):", script)
    assert parallel is not None and "seq" not in parallel.group(1)
    _check(_func(build), rule, sizes={"batch": 2, "seq": 19})


@pytest.mark.parametrize("shape", [(128, 384), (7, 40), (3, 13)])
def test_layer_norm(shape: tuple[int, int]) -> None:
    _check(_func(lambda: _layer_norm(*shape)), RowReduction())


@pytest.mark.parametrize("shape", [(12, 128, 32), (3, 5, 7), (1, 1, 1)])
def test_elementwise_transpose_add(shape: tuple[int, int, int]) -> None:
    _check(_func(lambda: _transpose_add(*shape)), Elementwise())


@pytest.mark.parametrize(("batch", "seq"), [(2, 40), (1, 1)])
def test_symbolic_elementwise_vectorizes_its_static_axes(batch: int, seq: int) -> None:
    func = _func(_symbolic_transpose)
    _check(func, Elementwise(), sizes={"batch": batch, "seq": seq})
    script = Elementwise().apply(func.with_attr("global_symbol", "main"), HOST, False).mod.script()
    assert "T.vectorized" in script and "T.parallel" in script


@pytest.mark.parametrize("target", [ARM, AVX2], ids=["arm", "avx2"])
def test_rules_compile_for_other_isas(target: Any) -> None:
    _check(_func(lambda: _dense(33, 40, 50)), Matmul(), target)
    _check(_func(lambda: _softmax(5, 48)), RowReduction(), target)


def test_vector_width_follows_the_target() -> None:
    assert common.vector_bits(HOST) in (256, 512)
    assert common.vector_bits(AVX2) == 256
    assert common.vector_bits(ARM) == 128
    assert common.vector_lanes(ARM, 32) == 4


def test_register_tiles_are_the_widest_that_divide_the_columns() -> None:
    def tile(target: Any, columns: int | None) -> tuple[int, int]:
        chosen = matmul.tile_for(target, 32, columns)
        return chosen.rows, chosen.cols

    assert tile(AVX512, 384) == (4, 96)
    assert tile(AVX512, None) == (8, 32)
    assert tile(AVX512, 128) == (4, 64)
    assert tile(AVX512, 32) == (8, 32)
    assert tile(AVX512, 33) == (8, 32)
    assert tile(AVX2, 384) == (6, 16)
    assert tile(ARM, 384) == (6, 16)


def test_rules_decline_what_they_do_not_know() -> None:
    middle = _middle_sum.with_attr("global_symbol", "main")
    assert Matmul().apply(middle, HOST, False) is None
    assert RowReduction().apply(middle, HOST, False) is None
    assert Elementwise().apply(middle, HOST, False) is None
    assert Matmul().apply(_func(lambda: _softmax(4, 8)), HOST, False) is None


def test_schedule_module_lists_unscheduled_kernels() -> None:
    dense = _func(lambda: _dense(8, 16, 32)).with_attr("global_symbol", "dense")
    middle = _middle_sum.with_attr("global_symbol", "middle")
    mod = tvm.IRModule({"dense": dense, "middle": middle})
    mod, unscheduled = schedules.schedule_module(mod, HOST)
    assert unscheduled == ["middle"]
    assert mod["dense"].attrs[schedules.SCHEDULED]


def test_build_names_unscheduled_kernels_in_a_warning(
    tiny_model: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = lower.import_onnx(tiny_model.to_onnx())
    with caplog.at_level(logging.WARNING, logger="nlpress.targets.lower"):
        lower.build(mod, get_target("x86"))
    assert "unscheduled kernels" not in caplog.text
    monkeypatch.setattr(schedules, "default_rules", lambda: ())
    with caplog.at_level(logging.WARNING, logger="nlpress.targets.lower"):
        lower.build(mod, get_target("x86"))
    # The matmul is over weight panels where this CPU's table packs them (schedules/panels.py).
    assert re.search(r"unscheduled kernels: cast, fused_p?matmul\w*_relu", caplog.text)
