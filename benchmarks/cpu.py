"""nlpress x86 artifacts beside ONNX Runtime on all-MiniLM-L6-v2, as a user runs them.

For each static (batch, seq) it compiles minilm-l6 for this CPU twice: fp32 (`-p O1`), and int8
(`-p int8`, calibrated once on the zoo's calibration text with symbolic shapes, then folded to
the shape). Beside them: ONNX Runtime on the fp32 model and on its per-channel dynamic int8
model (`quantize_dynamic(per_channel=True, op_types_to_quantize=["MatMul"])`). All four are
timed in one fresh process with the thread settings removed from its environment, each loaded
with its defaults (`nlpress.load(DIR)`, ORT's own intra-op threads), in turn on tokenized
evaluation sentences padded to the shape, after a pause before every run that lets every
thread pool go idle (`nlpress.targets.bench`). Reported: medians, the median of run-by-run
ratios nlpress/ORT, the fp32 outputs' largest difference from ORT fp32 and the int8 sentence
embeddings' cosine to ORT fp32.

--workload adds artifacts compiled without --shape (symbolic batch and sequence) on the
evaluation sentences (the first of each pair, 201 sentences), batch 1 (each sentence at its own
length) and batch 32 (each batch padded to its longest sentence): fp32 beside ORT fp32 and int8
beside ORT's dynamic int8, each the whole workload in turn, three rounds
(`nlpress.targets.bench.compare_workload`); sentences per second and batch latency p50/p90/p99.

--busy measures each shape a second time while one CPU-bound process (started and stopped by
the benchmark, bounded in time) competes for the cores, as on a shared machine, and reports
each ratio beside its quiet one.

--sweep times the matmul kernels of the model's shapes with other register tiles than the
ones the schedule tables choose for this CPU (fp32 panels, int8 blocks), paired against the
table's, so the tables' choice is measured on the machine at hand.

--mcpu CPU compiles the artifacts for another x86 CPU than this one (e.g. `znver3` on an AVX-512
machine: the AVX2 kernels), measured here.

Writes cpu.json and cpu.md into --out and the "cpu" section of benchmarks/RESULTS.md ("cpu-CPU"
with --mcpu).

    python benchmarks/cpu.py [--shapes 1x128 8x128] [--runs 20] [--settle 0.2] [--workload]
                             [--busy] [--sweep] [--mcpu CPU]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import machine
import numpy as np

log = logging.getLogger("benchmarks.cpu")

MODEL = "minilm-l6"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
RUNTIMES = ("nlpress fp32", "ORT fp32", "nlpress int8", "ORT int8")
# Tiles --sweep tries: fp32 panels (rows, columns); int8 blocks (rows, blocks of columns).
FP32_TILES = {
    "avx512f": ((4, 64), (8, 32), (4, 48), (6, 32), (12, 32), (4, 96)),
    "avx2": ((6, 16), (4, 16), (4, 24), (8, 8), (5, 16), (3, 32)),
}
INT8_TILES = ((4, 2), (6, 2), (4, 3), (8, 1), (2, 4), (3, 3))
# A padded 128-token sequence, and a sentence of 28 tokens (the evaluation text's mean length).
KERNEL_SHAPES = (
    (128, 384, 384),
    (128, 384, 1536),
    (128, 1536, 384),
    (28, 384, 1536),
    (28, 1536, 384),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=["1x128", "8x128"])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--settle", type=float, default=0.2, help="seconds of pause before a run")
    parser.add_argument("--sweep", action="store_true", help="also sweep the register tiles")
    parser.add_argument("--busy", action="store_true", help="also measure beside a busy process")
    parser.add_argument("--workload", action="store_true", help="also the sentence workloads")
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 32])
    parser.add_argument("--reuse", action="store_true", help="reuse the artifacts in --out")
    parser.add_argument("--mcpu", help="compile for this CPU (e.g. znver3 on AVX-512: AVX2 code)")
    parser.add_argument("--out", default="benchmarks/out/cpu")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child process's spec
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.measure:
        spec = json.loads(args.measure)
        print(json.dumps(measure_workload(spec) if "batch" in spec else measure(spec)))
        return
    out = Path(args.out)
    report: dict[str, Any] = {"model": MODEL, "cpu": machine.cpu(), "commit": machine.commit()}
    report["rows"] = [time_shape(shape, out, args) for shape in args.shapes]
    if args.workload:
        report["workloads"] = workloads(out, args)
    if args.sweep:
        report["sweep"] = sweep()
    write(report, out, args)


def build(shape: str, out: Path, reuse: bool, mcpu: str | None = None) -> dict[str, str]:
    """The fp32 and int8 artifacts at `shape` (for `mcpu`, else this CPU) and the ORT models."""
    import nlpress
    from nlpress.models import zoo

    batch, seq = (int(x) for x in shape.split("x"))
    shapes = {name: (batch, seq) for name in INPUTS}
    paths = {"fp32": out / f"fp32-{shape}", "int8": out / f"int8-{shape}"}
    if not (reuse and (paths["fp32"] / "model.so").exists()):
        nlpress.compile(MODEL, "x86", paths["fp32"], shapes=shapes, mcpu=mcpu)
    if not (reuse and (paths["int8"] / "model.so").exists()):
        nlpress.compile(
            int8_model(out), "x86", paths["int8"], pipeline="fold", shapes=shapes, mcpu=mcpu
        )
    return {
        "nlpress fp32": str(paths["fp32"]),
        "ORT fp32": str(zoo.model_path(MODEL)),
        "nlpress int8": str(paths["int8"]),
        "ORT int8": str(ort_dynamic_int8(out)),
    }


def int8_model(out: Path) -> Path:
    """minilm-l6 through `-p int8` with symbolic shapes, saved once into `out`."""
    import nlpress
    from nlpress.ir import save_model

    path = out / "minilm-int8.onnx"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        save_model(nlpress.optimize(MODEL, "int8").model, path)
    return path


def ort_dynamic_int8(out: Path) -> Path:
    """ORT's per-channel dynamic int8 MatMul model of minilm-l6, made once into `out`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from nlpress.models import zoo

    path = out / "minilm-ort-dynamic-int8.onnx"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(
            zoo.model_path(MODEL),
            path,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
        )
    return path


def time_shape(shape: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Build for one shape, then time all four runtimes in a fresh process."""
    began = time.perf_counter()
    paths = build(shape, out, args.reuse, args.mcpu)
    spec = {"shape": shape, "paths": paths, "runs": args.runs, "settle": args.settle}
    row = measure_in_fresh_process(spec)
    if args.busy:
        with busy_process(seconds=3600):
            row["busy"] = measure_in_fresh_process(spec)
        row["busy_over_quiet"] = {
            kind: round(row["busy"]["ratio"][kind] / row["ratio"][kind], 3)
            for kind in ("fp32", "int8")
        }
    row["build_and_measure_s"] = round(time.perf_counter() - began, 1)
    log.info(
        "%s: fp32 %.2f of ORT fp32, int8 %.2f of ORT int8",
        shape, row["ratio"]["fp32"], row["ratio"]["int8"],
    )  # fmt: skip
    return row


def workloads(out: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The symbolic artifacts on the evaluation sentences, each batch size, fp32 and int8."""
    import nlpress
    from nlpress.models import zoo

    paths = {"fp32": out / "fp32-symbolic", "int8": out / "int8-symbolic"}
    if not (args.reuse and (paths["fp32"] / "model.so").exists()):
        nlpress.compile(MODEL, "x86", paths["fp32"], mcpu=args.mcpu)
    if not (args.reuse and (paths["int8"] / "model.so").exists()):
        nlpress.compile(int8_model(out), "x86", paths["int8"], pipeline="fold", mcpu=args.mcpu)
    references = {"fp32": str(zoo.model_path(MODEL)), "int8": str(ort_dynamic_int8(out))}
    rows = []
    for batch in args.batches:
        for kind, path in paths.items():
            spec = {"artifact": str(path), "ort": references[kind], "batch": batch}
            row = {"kind": kind, **measure_in_fresh_process(spec)}
            log.info(
                "workload batch %d %s: throughput %.2fx ORT, p99 %.2f of ORT's",
                batch, kind, row["throughput_ratio"], row["p99_ratio"],
            )  # fmt: skip
            rows.append(row)
    return rows


def measure_workload(spec: dict[str, Any]) -> dict[str, Any]:
    """(In the fresh process.) The evaluation sentences through one artifact and ORT."""
    import nlpress
    from nlpress.models import text, zoo
    from nlpress.models.feeds import workload_batches
    from nlpress.targets.bench import compare_workload

    tokenizer = text.load_tokenizer(str(zoo.get(MODEL).tokenizer()))
    sentences = [a for a, _ in text.evaluation_pairs()]
    session = nlpress.load(spec["artifact"])
    batches = workload_batches(session, tokenizer, sentences, spec["batch"], 512)
    result = compare_workload(spec["artifact"], spec["ort"], batches)
    return {"batch": spec["batch"], **result}


def measure_in_fresh_process(spec: dict[str, Any]) -> dict[str, Any]:
    """`measure` (or `measure_workload`) in a new process with default settings."""
    return machine.in_fresh_process(__file__, spec)


@contextlib.contextmanager
def busy_process(seconds: float) -> Iterator[None]:
    """One CPU-bound process for the length of the block (and never longer than `seconds`)."""
    spin = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    process = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(1.0)  # let it reach its loop
        yield
    finally:
        process.kill()
        process.wait()


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """(In the fresh process.) Time the four runtimes in turn; compare their outputs."""
    import nlpress
    from nlpress.targets.bench import alternate, ort_session, paired_ratio

    batch, seq = (int(x) for x in spec["shape"].split("x"))
    feeds = text_feeds(batch, seq)
    sessions: dict[str, Any] = {}
    for name, path in spec["paths"].items():
        sessions[name] = nlpress.load(path) if name.startswith("nlpress") else ort_session(path, 0)
    fns = [lambda s=sessions[n]: s.run(None, feeds) for n in RUNTIMES]
    times = dict(zip(RUNTIMES, alternate(fns, spec["runs"], settle=spec["settle"]), strict=True))
    outputs = {n: sessions[n].run(None, feeds)[0] for n in RUNTIMES}
    reference = outputs["ORT fp32"]
    mask = feeds["attention_mask"]
    return {
        "shape": spec["shape"],
        "runs": spec["runs"],
        "settle_s": spec["settle"],
        "threads": {"nlpress": sessions["nlpress fp32"].threads, "onnxruntime": "ORT default"},
        "median_ms": {n: round(statistics.median(t) * 1e3, 2) for n, t in times.items()},
        "ratio": {
            "fp32": paired_ratio(times["nlpress fp32"], times["ORT fp32"]),
            "int8": paired_ratio(times["nlpress int8"], times["ORT int8"]),
            "int8_vs_ort_fp32": paired_ratio(times["nlpress int8"], times["ORT fp32"]),
        },
        "fp32_max_abs_diff": float(np.abs(outputs["nlpress fp32"] - reference).max()),
        "int8_cosine": sentence_cosine(outputs["nlpress int8"], reference, mask),
        "ort_int8_cosine": sentence_cosine(outputs["ORT int8"], reference, mask),
        "load_average": machine.cpu()["load_average"],
    }


def text_feeds(batch: int, seq: int) -> dict[str, np.ndarray]:
    """The first `batch` evaluation sentences, tokenized and padded to `seq`."""
    from nlpress.models import text, zoo

    tokenizer = text.load_tokenizer(str(zoo.get(MODEL).tokenizer()))
    sentences = [a for a, _ in text.evaluation_pairs()[:batch]]
    feeds: dict[str, np.ndarray] = text.encode(tokenizer, sentences, seq, "max_length")
    return feeds


def sentence_cosine(ours: np.ndarray, theirs: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean and least cosine of the mean-pooled sentence embeddings."""
    from nlpress.models.metrics import mean_pool

    cos = (mean_pool(ours, mask) * mean_pool(theirs, mask)).sum(-1)  # both L2-normalized
    return {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}


def sweep() -> dict[str, list[dict[str, Any]]]:
    """Each candidate tile's kernel time over the table's, median of paired runs, per shape."""
    from nlpress.targets import get_target, lower
    from nlpress.targets.schedules import int8, panels

    target = lower.tvm_target(get_target("x86"))
    chosen_fp32 = panels.panel_tile(target)
    family = int8.int8_intrinsics.int8_kernel(target).family
    result: dict[str, list[dict[str, Any]]] = {"fp32": [], "int8": []}
    for m, k, n in KERNEL_SHAPES:
        if chosen_fp32 is not None:
            base = _kernel(m, k, n, False, fp32_tile=chosen_fp32)
            for tile in fp32_tiles(target):
                result["fp32"].append(_row(m, k, n, tile, base, _kernel(m, k, n, False, tile)))
        base = _kernel(m, k, n, True, int8_tile=int8.TILES[family])
        for tile in INT8_TILES:
            row = _row(m, k, n, tile, base, _kernel(m, k, n, True, int8_tile=tile))
            result["int8"].append(row)
    from nlpress.targets.bench import tvm_threads

    chosen = {"fp32": chosen_fp32, "int8": int8.TILES[family], "family": family}
    result["chosen"] = [{**chosen, "threads": tvm_threads()}]
    return result


def fp32_tiles(target: Any) -> tuple[tuple[int, int], ...]:
    """The fp32 panel tiles --sweep tries on the target: those of its widest vectors."""
    from tvm.target import codegen

    return next(t for f, t in FP32_TILES.items() if codegen.target_has_features(f, target))


def _row(m: int, k: int, n: int, tile: Any, base: Any, candidate: Any) -> dict[str, Any]:
    from nlpress.targets.bench import alternate, paired_ratio

    base_t, cand_t = alternate([base, candidate], runs=30, warmup=3, settle=0)
    ms = statistics.median(cand_t) * 1e3
    row = {"shape": f"{m}x{k}x{n}", "tile": list(tile), "ms": round(ms, 3)}
    row["vs_table"] = paired_ratio(cand_t, base_t)
    row["gops"] = round(2 * m * k * n / ms / 1e6, 1)
    log.info(
        "sweep %s tile %s: %.3f ms, %.3f of the table's", row["shape"], tile, ms, row["vs_table"]
    )
    return row


def _kernel(
    m: int, k: int, n: int, quantized: bool, fp32_tile: Any = None, int8_tile: Any = None
) -> Any:
    """A callable running the (fused) matmul kernel of x[1, m, k] @ W[k, n] + b once.

    Float kernels take a symbolic row count, as a sentence's tokens are, and run on m rows: the
    panel rule tiles those, the Matmul rule static ones (`schedules/panels.py`).
    """
    import tvm

    from nlpress.targets import get_target, lower
    from nlpress.targets.bench import _kernel_calls, _random_array
    from nlpress.targets.schedules import int8, panels
    from nlpress.targets.stack_tiles import pipeline_for

    target = lower.tvm_target(get_target("x86"))
    family = int8.int8_intrinsics.int8_kernel(target).family
    saved = panels.PANELS, dict(int8.TILES)
    if fp32_tile is not None:
        panels.PANELS = (("avx2", tuple(fp32_tile), 0),)
    if int8_tile is not None:
        int8.TILES[family] = tuple(int8_tile)
    try:
        rows = m if quantized else "rows"
        mod, _ = lower.cpu_kernels(lower.import_onnx(_dense(rows, k, n, quantized)), target)
    finally:
        panels.PANELS, int8.TILES = saved[0], saved[1]
    name = next(x for x in _kernel_calls(mod) if "matmul" in x)
    func = mod[name].with_attr("global_symbol", "main")
    library = tvm.compile(tvm.IRModule({"main": func}), target, tir_pipeline=pipeline_for(target))
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(_random_array(rng, p, m)) for p in mod[name].params]
    return lambda: library["main"](*args)


def _dense(m: int | str, k: int, n: int, quantized: bool) -> Any:
    """x[1, m, k] @ W[k, n] + b as ONNX (m a size or a dim's name), the weight behind QDQ when
    `quantized`."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")]
    nodes = []
    if quantized:
        scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        inits += [
            numpy_helper.from_array(np.round(w / scale).astype(np.int8), "wq"),
            numpy_helper.from_array(scale, "ws"),
            numpy_helper.from_array(np.zeros(n, np.int8), "wzp"),
            numpy_helper.from_array(np.float32(0.05), "xs"),
            numpy_helper.from_array(np.uint8(128), "xzp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "xs", "xzp"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["w"], axis=1),
        ]
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes += [
        helper.make_node("MatMul", ["xd" if quantized else "x", "w"], ["y"]),
        helper.make_node("Add", ["y", "b"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, m, k])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, m, n])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def write(report: dict[str, Any], out: Path, args: argparse.Namespace) -> None:
    """cpu.json (everything), cpu.md and the RESULTS.md section (the tables)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    busy = [r for r in report["rows"] if "busy" in r]
    tables = [static_table(report["rows"], args)] if report["rows"] else []
    tables += [workload_table(report["workloads"])] if report.get("workloads") else []
    tables += [busy_table(busy)] if busy else []
    tables += [sweep_table(report["sweep"])] if report.get("sweep") else []
    lines = [line for n, table in enumerate(tables) for line in [""] * (n > 0) + table]
    (out / "cpu.md").write_text("\n".join(lines) + "\n")
    command = machine.command(__file__, sys.argv[1:])
    name, title = "cpu", "x86 artifacts vs ONNX Runtime (benchmarks/cpu.py)"
    if args.mcpu:  # code for another CPU than this one: a section of its own
        name, title = f"cpu-{args.mcpu}", f"{title}, compiled for {args.mcpu}"
    machine.write_section(name, title, lines, command)
    log.info("wrote %s, %s and %s", out / "cpu.json", out / "cpu.md", machine.RESULTS)


def static_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The static shapes' rows: the four runtimes' medians, the ratios and the agreement."""
    lines = [
        f"{MODEL}, static shapes, medians of {args.runs} runs of each in turn with "
        f"{args.settle} s of pause before each, in one fresh process with default settings "
        f"(nlpress {rows[0]['threads']['nlpress']} threads, ORT its default). "
        "Ratios are medians of run-by-run ratios.",
        "",
        "| shape | nlpress fp32 ms | ORT fp32 ms | fp32 ratio | nlpress int8 ms | "
        "ORT int8 ms | int8 ratio | int8 / ORT fp32 | fp32 max diff | int8 cos (min) | "
        "ORT int8 cos (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms, ratio = r["median_ms"], r["ratio"]
        lines.append(
            f"| {r['shape']} | {ms['nlpress fp32']:.1f} | {ms['ORT fp32']:.1f} | "
            f"{ratio['fp32']:.3f} | {ms['nlpress int8']:.1f} | {ms['ORT int8']:.1f} | "
            f"{ratio['int8']:.3f} | {ratio['int8_vs_ort_fp32']:.3f} | "
            f"{r['fp32_max_abs_diff']:.1e} | {r['int8_cosine']['mean']:.4f} "
            f"({r['int8_cosine']['min']:.4f}) | {r['ort_int8_cosine']['mean']:.4f} "
            f"({r['ort_int8_cosine']['min']:.4f}) |"
        )
    return lines


def busy_table(rows: list[dict[str, Any]]) -> list[str]:
    """The static rows measured beside a busy process, against their quiet ratios."""
    lines = [
        "Beside one CPU-bound process (a busy machine), measured right after the quiet rows:",
        "",
        "| shape | fp32 ratio busy | quiet | busy / quiet | int8 ratio busy | quiet | "
        "busy / quiet | load average |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, q, bq = r["busy"]["ratio"], r["ratio"], r["busy_over_quiet"]
        lines.append(
            f"| {r['shape']} | {b['fp32']:.3f} | {q['fp32']:.3f} | {bq['fp32']:.3f} | "
            f"{b['int8']:.3f} | {q['int8']:.3f} | {bq['int8']:.3f} | "
            f"{r['busy']['load_average'][0]:.2f} |"
        )
    return lines


def workload_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of the sentence workloads."""
    lines = [
        "Artifacts with symbolic batch and sequence on the 201 evaluation sentences in their "
        "order, each batch padded to its longest sentence; the whole workload on each runtime "
        "in turn, three rounds (throughput of the median round, latencies over all batches). "
        "int8 is compared with ORT's per-channel dynamic int8.",
        "",
        "| batch | kind | nlpress sent/s | ORT sent/s | throughput ratio | nlpress p50 / p90 / p99 "
        "ms | ORT p50 / p90 / p99 ms | p99 ratio | least cosine vs ORT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours, theirs = r["nlpress"], r["ort"]
        cosine = min(r["least_cosine"].values(), default=float("nan"))
        lines.append(
            f"| {r['batch']} | {r['kind']} | {ours['sentences_per_s']:.1f} | "
            f"{theirs['sentences_per_s']:.1f} | {r['throughput_ratio']:.3f} | "
            f"{ours['p50_ms']:.1f} / {ours['p90_ms']:.1f} / {ours['p99_ms']:.1f} | "
            f"{theirs['p50_ms']:.1f} / {theirs['p90_ms']:.1f} / {theirs['p99_ms']:.1f} | "
            f"{r['p99_ratio']:.3f} | {cosine:.5f} |"
        )
    return lines


def sweep_table(result: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown rows of the tile sweep."""
    chosen = result["chosen"][0]
    lines = [
        f"Register tiles on this CPU (the tables: fp32 panels {chosen['fp32']}, int8 "
        f"{chosen['family']} {chosen['int8']}); kernel time over the table's tile's, median of "
        f"30 paired runs, {chosen['threads']} threads of TVM's pool.",
        "",
        "| kernel | shape | tile | ms | GOP/s | vs table |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("fp32", "int8"):
        for r in result[kind]:
            tile = "x".join(map(str, r["tile"]))
            cells = [kind, r["shape"], tile, f"{r['ms']:.3f}", r["gops"], f"{r['vs_table']:.3f}"]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


if __name__ == "__main__":
    main()
