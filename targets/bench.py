"""Side-by-side timing of a compiled artifact and ONNX Runtime on the same feeds.

Runs alternate (artifact, ORT, artifact, ...) after a warm-up, so that both see the same load on
a shared machine; medians are reported with the load average. Each timed run starts after a
pause (`SETTLE_S`): both runtimes keep their worker threads spinning for tens of milliseconds
after a run, and a spinning pool of one runtime would otherwise take a core from the other's
next run. With the pause, each run starts from the same idle state, as a request arriving at a
deployed model does.

Both use the same number of threads: ORT through its intra-op pool, the artifact through its
session options (`runtime.SessionOptions`, by default one unpinned thread per usable CPU, as
`nlpress.load` gives a user); nothing is read from or written to the environment.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from nlpress.ir import Model, UsageError
from nlpress.ir.embedding import declared, is_floating, resolved_name
from nlpress.passes.calibration import MASK, pooled_cosine
from nlpress.targets.runtime import FeedError, Session, SessionOptions, dim_limits

log = logging.getLogger(__name__)

WARMUP = 3
# Seconds between timed runs: longer than either runtime's worker threads keep spinning.
SETTLE_S = 0.2
# Sizes of symbolic dims when no shape is given: batch 1 on the first axis, sequence 128 on the
# others (clipped to the largest the artifact computes).
DEFAULT_BATCH = 1
DEFAULT_SEQUENCE = 128


def compare_with_ort(
    artifact_dir: str | os.PathLike[str],
    onnx_model: str | os.PathLike[str] | onnx.ModelProto | Model,
    shapes: Mapping[str, Sequence[int | str]] | None = None,
    runs: int = 20,
    *,
    feeds: Mapping[str, np.ndarray] | None = None,
    threads: int = 0,
    warmup: int = WARMUP,
    settle: float = SETTLE_S,
) -> dict[str, Any]:
    """Time an x86 artifact against ONNX Runtime (fp32, CPU) and compare their outputs.

    Args:
        artifact_dir: A compiled artifact for this host.
        onnx_model: The model ORT runs (a path, ModelProto or IR model), usually the original.
        shapes: Dims per input name, for inputs with symbolic dims; static dims need none.
        runs: Timed runs of each, alternating.
        feeds: The inputs; default seeded random ones of the given shapes (`bench_feeds`).
        threads: Threads for both runtimes (0: one per usable CPU, the session default).
        warmup: Untimed runs of each first.
        settle: Seconds of pause before each timed run (0: back to back).

    Returns:
        JSON-ready facts: medians in ms ("nlpress_ms", "ort_ms"), "ratio" (nlpress / ORT),
        the artifact's outputs against the timed ORT session's ("max_abs_diff" per output,
        "worst", and "cosine" of pooled rows per output), the same against `onnx_model` run
        as written, graph optimizations off ("vs_graph"), the threads each used, the load
        average.

    """
    if runs < 1:
        raise UsageError(f"runs {runs}: time at least 1 run")
    session = Session(artifact_dir, SessionOptions(threads=threads))
    reference = ort_session(onnx_model, session.threads)
    inputs = dict(feeds) if feeds is not None else bench_feeds(session, shapes or {})
    ours, theirs = alternate(
        [lambda: session.run(None, inputs), lambda: reference.run(None, inputs)],
        runs,
        warmup,
        settle,
    )
    names = [o.name for o in session.get_outputs()]
    outputs, ort_outputs = session.run(None, inputs), reference.run(names, inputs)
    diffs = _diffs(names, outputs, ort_outputs)
    cosines = _cosines(names, outputs, ort_outputs, inputs)
    return {
        "runs": runs,
        "settle_s": settle,
        "threads": {"nlpress": tvm_threads(), "onnxruntime": session.threads},
        "pinned": session.options.pin,
        "shapes": {name: list(array.shape) for name, array in inputs.items()},
        "nlpress_ms": _median_ms(ours),
        "ort_ms": _median_ms(theirs),
        "ratio": round(statistics.median(ours) / statistics.median(theirs), 3),
        "paired_ratio": paired_ratio(ours, theirs),
        "max_abs_diff": diffs,
        "worst": max(diffs.values(), default=0.0),
        "cosine": cosines,
        "embedding": resolved_name(session.get_outputs(), declared(session)),
        "vs_graph": agreement(names, outputs, onnx_model, inputs),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def compare_workload(
    artifact_dir: str | os.PathLike[str],
    onnx_model: str | os.PathLike[str] | onnx.ModelProto | Model,
    batches: Sequence[Mapping[str, np.ndarray]],
    *,
    threads: int = 0,
    rounds: int = 3,
    settle: float = SETTLE_S,
) -> dict[str, Any]:
    """Run a workload (batches of tokenized sentences) through an artifact and through ORT.

    In each of `rounds` rounds the whole workload runs on the artifact, batch after batch as
    requests arriving back to back, then on ORT, with `settle` seconds of pause between the
    two (alternating batch by batch would leave one runtime's spinning threads on the cores
    the other's next batch needs). Throughput is the median round's; latencies are over every
    batch of every round.

    Returns:
        JSON-ready facts for "nlpress" and "ort": sentences per second and the p50/p90/p99
        latency of a batch in ms; "throughput_ratio" (nlpress sentences/s over ORT's: above 1
        is faster), "p99_ratio" (nlpress / ORT), and the agreement of the outputs over the
        workload (largest abs diff, least pooled cosine per output).

    """
    if not batches:
        raise UsageError("the workload has no sentences")
    session = Session(artifact_dir, SessionOptions(threads=threads))
    reference = ort_session(onnx_model, session.threads)
    names = [o.name for o in session.get_outputs()]
    worst: dict[str, float] = {}
    least: dict[str, float] = {}
    for feeds in batches:  # the agreement, and a warm-up of both
        mine, ort = session.run(None, feeds), reference.run(names, feeds)
        for name, value in _diffs(names, mine, ort).items():
            worst[name] = max(worst.get(name, 0.0), value)
        for name, value in _cosines(names, mine, ort, feeds).items():
            least[name] = min(least.get(name, 1.0), value)
    runners = {
        "nlpress": lambda feeds: session.run(None, feeds),
        "ort": lambda feeds: reference.run(names, feeds),
    }
    times: dict[str, list[list[float]]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run_one in runners.items():
            time.sleep(settle)
            times[name].append(_timed_batches(run_one, batches))
    sentences = sum(len(next(iter(f.values()))) for f in batches)
    facts = {name: _latencies(rounds_, sentences) for name, rounds_ in times.items()}
    speed = facts["nlpress"]["sentences_per_s"] / facts["ort"]["sentences_per_s"]
    return {
        "batches": len(batches),
        "sentences": sentences,
        "rounds": rounds,
        "threads": {"nlpress": session.threads, "onnxruntime": session.threads},
        **facts,
        "throughput_ratio": round(speed, 3),
        "p99_ratio": round(facts["nlpress"]["p99_ms"] / facts["ort"]["p99_ms"], 3),
        "max_abs_diff": worst,
        "least_cosine": least,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _timed_batches(run: Callable[[Any], Any], batches: Sequence[Any]) -> list[float]:
    """Seconds of each batch, run back to back."""
    seconds = []
    for feeds in batches:
        began = time.perf_counter()
        run(feeds)
        seconds.append(time.perf_counter() - began)
    return seconds


def _latencies(rounds: Sequence[Sequence[float]], sentences: int) -> dict[str, float]:
    """Sentences per second of the median round, and batch latency percentiles over all."""
    total = statistics.median(sum(one) for one in rounds)
    ms = np.concatenate([np.asarray(one) for one in rounds]) * 1e3
    return {
        "sentences_per_s": round(sentences / total, 2),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)},
    }


def agreement(
    names: Sequence[str],
    outputs: Sequence[np.ndarray],
    model: str | os.PathLike[str] | onnx.ModelProto | Model,
    feeds: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """The artifact's `outputs` against `model` run in ONNX Runtime as written (no fusions).

    Returns:
        "max_abs_diff" per output, "worst", and "cosine": per output, the mean cosine of the
        rows, mean-pooled over real tokens where the output is [batch, sequence, hidden] and the
        feeds have an attention mask (sentence embeddings), which means something for int8
        where a max abs diff on one element does not; "embedding": the output among `names`
        that budgets measure (`ir/embedding.py`), where there is one.

    """
    from nlpress.ir import load_model
    from nlpress.ir.verify import run

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    expected = run(model, feeds)
    missing = [name for name in names if name not in expected]
    if missing:
        raise UsageError(f"the model has no output {missing[0]}: nothing to compare it with")
    theirs = [expected[name] for name in names]
    diffs = _diffs(list(names), list(outputs), theirs)
    return {
        "max_abs_diff": diffs,
        "worst": max(diffs.values(), default=0.0),
        "cosine": _cosines(names, outputs, theirs, feeds),
        "embedding": resolved_name(
            [t for t in model.graph.outputs if t.name in names], declared(model)
        ),
    }


def _cosines(
    names: Sequence[str],
    ours: Sequence[np.ndarray],
    theirs: Sequence[np.ndarray],
    feeds: Mapping[str, np.ndarray],
) -> dict[str, float]:
    return {
        name: round(pooled_cosine([b], [a], [feeds]), 6) if a.shape == b.shape else 0.0
        for name, a, b in zip(names, ours, theirs, strict=True)
        if is_floating(np.asarray(a).dtype)
    }


def tvm_threads() -> int:
    """The threads TVM's CPU thread pool runs parallel loops on."""
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())


def ort_session(model: str | os.PathLike[str] | onnx.ModelProto | Model, threads: int) -> Any:
    """An ONNX Runtime CPU session with `threads` intra-op threads, all graph optimizations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if isinstance(model, Model):
        model = model.to_onnx()
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def bench_feeds(
    session: Session, shapes: Mapping[str, Sequence[int | str]]
) -> dict[str, np.ndarray]:
    """Seeded random feeds of the bench's shapes (`bench_shapes`), like a tokenizer's output.

    Token ids (inputs that index a table) are drawn from the whole table, the attention mask
    is all ones, other integer inputs are 0 or 1, float inputs standard normal.
    """
    rng = np.random.default_rng(0)
    ranges = {
        str(v["name"]): (int(v["index_range"][0]), int(v["index_range"][1]))
        for v in session.manifest["inputs"]
        if "index_range" in v
    }
    feeds: dict[str, np.ndarray] = {}
    for arg, dims in zip(session.get_inputs(), bench_shapes(session, shapes), strict=True):
        kind = np.dtype(arg.dtype).kind
        if arg.name == MASK and kind in "iub":
            feeds[arg.name] = np.ones(dims, dtype=arg.dtype)
        elif arg.name in ranges and kind in "iu":
            high = ranges[arg.name][1]
            feeds[arg.name] = rng.integers(0, high + 1, size=dims).astype(arg.dtype)
        elif kind in "iub":
            feeds[arg.name] = rng.integers(0, 2, size=dims).astype(arg.dtype)
        else:
            feeds[arg.name] = rng.standard_normal(dims).astype(arg.dtype)
    return feeds


def bench_shapes(session: Session, shapes: Mapping[str, Sequence[int | str]]) -> list[list[int]]:
    """Each input's dims: as given, else its static dims, symbolic ones by the defaults.

    A symbolic dim takes the size another given shape gave it; else DEFAULT_BATCH on the first
    axis and DEFAULT_SEQUENCE on the others, clipped to the largest size the artifact computes
    (its manifest's dim limits).

    Raises:
        FeedError: A shape for an input the artifact does not have, or of the wrong rank.

    """
    inputs = session.get_inputs()
    known = [arg.name for arg in inputs]
    unknown = [name for name in shapes if name not in known]
    if unknown:
        raise FeedError(f"--shape {unknown[0]}: no such input; the inputs: {', '.join(known)}")
    sizes: dict[str, int] = {}
    for arg in inputs:
        given = shapes.get(arg.name)
        if given is None:
            continue
        if len(given) != len(arg.shape):
            raise FeedError(
                f"--shape {arg.name}: {len(given)} dims, but the input has {len(arg.shape)} "
                f"{arg.shape}"
            )
        for dim, size in zip(arg.shape, given, strict=True):
            if isinstance(dim, str) and isinstance(size, int):
                sizes.setdefault(dim, size)
    limits = dim_limits(session.manifest)
    result = []
    for arg in inputs:
        wanted: list[int | str | None] = list(shapes.get(arg.name) or arg.shape)
        dims = []
        for axis, dim in enumerate(wanted):
            if isinstance(dim, int):
                dims.append(dim)
                continue
            if str(dim) not in sizes:
                default = DEFAULT_BATCH if axis == 0 else DEFAULT_SEQUENCE
                largest = limits.get(str(dim), (default, ""))[0]
                sizes[str(dim)] = min(default, largest)
            dims.append(sizes[str(dim)])
        result.append(dims)
    return result


def alternate(
    fns: Sequence[Callable[[], Any]], runs: int, warmup: int = WARMUP, settle: float = SETTLE_S
) -> list[list[float]]:
    """Seconds per run of each function, run in turn after `warmup` untimed runs of each."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, out in zip(fns, times, strict=True):
            time.sleep(settle)
            began = time.perf_counter()
            fn()
            out.append(time.perf_counter() - began)
    return times


def paired_ratio(ours: Sequence[float], theirs: Sequence[float]) -> float:
    """The median of the run-by-run ratios ours / theirs (robust to a machine's drift)."""
    return round(statistics.median(a / b for a, b in zip(ours, theirs, strict=True)), 3)


def _diffs(names: list[str], ours: list[np.ndarray], theirs: list[np.ndarray]) -> dict[str, float]:
    result = {}
    for name, a, b in zip(names, ours, theirs, strict=True):
        same = a.shape == b.shape
        delta = np.abs(a.astype(np.float64) - b.astype(np.float64)) if same else None
        result[name] = float(delta.max()) if delta is not None and delta.size else 0.0
        if not same:
            result[name] = float("inf")
    return result


def _median_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1e3, 3)


def profile_kernels(
    model: onnx.ModelProto,
    target: Any,
    *,
    default_schedules: bool = True,
    records: Path | None = None,
    repeat: int = 5,
) -> list[dict[str, Any]]:
    """Time each kernel of a static-shape model alone on random inputs; costliest first.

    Args:
        model: A model with static input shapes (fold with shapes first).
        target: A CPU Target descriptor that runs on this host.
        default_schedules: Schedule with nlpress's rules (off: TVM's plain loop nests).
        records: Tuning records to apply first.
        repeat: Timed calls per kernel (the median is kept).

    Returns:
        Rows of "kernel", "calls" (per model run), "ms" (one call), "total_ms" and
        "scheduled".

    """
    from nlpress.targets import lower

    tvm_target = lower.tvm_target(target)
    mod, unscheduled = lower.cpu_kernels(
        lower.import_onnx(model), tvm_target, records, default_schedules=default_schedules
    )
    calls = _kernel_calls(mod)
    rows = []
    for name, count in calls.items():
        ms = time_kernel(mod[name], tvm_target, repeat)
        rows.append(
            {
                "kernel": name,
                "calls": count,
                "ms": round(ms, 4),
                "total_ms": round(ms * count, 3),
                "scheduled": name not in unscheduled,
            }
        )
    return sorted(rows, key=lambda row: -float(row["total_ms"]))


def _kernel_calls(mod: Any) -> dict[str, int]:
    """How many times `main` calls each PrimFunc."""
    import tvm
    from tvm import relax

    counts: dict[str, int] = {}

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            name = expr.args[0].name_hint
            counts[name] = counts.get(name, 0) + 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return counts


def time_kernel(func: Any, tvm_target: Any, repeat: int) -> float:
    """Milliseconds per call of one PrimFunc on seeded random inputs (median of `repeat`)."""
    import tvm

    from nlpress.targets.stack_tiles import pipeline_for

    library = tvm.compile(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
        tvm_target,
        tir_pipeline=pipeline_for(tvm_target),
    )
    args = random_args(func, tvm.cpu())
    library["main"](*args)
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        library["main"](*args)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def random_args(func: Any, device: Any) -> list[Any]:
    """Seeded random tensors on `device` for a PrimFunc's parameters (0 or 1 for integers)."""
    import tvm

    rng = np.random.default_rng(0)
    return [tvm.runtime.tensor(_random_array(rng, param), device) for param in func.params]


def _random_array(rng: np.random.Generator, param: Any, symbolic: int = 1) -> np.ndarray:
    """Seeded random values for one parameter; each symbolic dim takes the size `symbolic`."""
    shape = [int(dim) if hasattr(dim, "value") else symbolic for dim in param.shape]
    dtype = str(param.dtype)
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0, 2, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)
