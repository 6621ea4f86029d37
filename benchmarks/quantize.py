"""quantize-insert on all-MiniLM-L6-v2: fidelity and size of int8 models beside ORT's quantizer.

Every configuration runs `fold,quantize-insert{...},cleanup` on minilm-l6 (dynamic batch and
sequence), calibrated on the project's calibration text, and is compared with the fp32 model
folded the same way on the evaluation text (`nlpress.models.metrics.fidelity`): mean and minimum
sentence cosine, recall@1, and the model's size in bytes. ONNX Runtime runs each QDQ model as
written (graph optimizations off: the quantization the graph states, what a lowering must
reproduce) and, for the `ort_opt_*` columns, with its own QDQ fusions. Beside them:
`onnxruntime.quantization.quantize_dynamic(per_channel=True, op_types_to_quantize=["MatMul"])`
on the same fp32 model.

With `--latency`, each nlpress configuration is also compiled for x86 at 1x128
(`nlpress.compile`) and timed against ONNX Runtime fp32 and ORT's dynamic model (2 intra-op
threads, medians of alternating runs); model.so sizes are reported. Writes quantize.json and
quantize.md into --out.

    python benchmarks/quantize.py [--only NAME ...] [--latency] [--runs N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from nlpress.compiler import optimize
from nlpress.ir import Model
from nlpress.ir.verify import session
from nlpress.models import zoo
from nlpress.models.metrics import fidelity
from nlpress.models.text import encode, evaluation_pairs, load_tokenizer

log = logging.getLogger("benchmarks.quantize")

SHAPES = {"input_ids": (1, 128), "attention_mask": (1, 128), "token_type_ids": (1, 128)}
CONFIGS: Mapping[str, str] = {
    "static-minmax": "calibration=minmax",
    "static-percentile": "calibration=percentile",
    "static-entropy": "calibration=entropy",
    "static-mse": "calibration=mse",
    "static-minmax-smooth0.5": "calibration=minmax smooth=0.5",
    "static-mse-budget0.997": "calibration=mse budget-cosine=0.997",
    "dynamic": "mode=dynamic",
    "dynamic-budget0.997": "mode=dynamic budget-cosine=0.997",
}
DEFAULT = ("static-minmax", "static-mse", "static-mse-budget0.997", "dynamic")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(DEFAULT), choices=list(CONFIGS))
    parser.add_argument("--no-ort", action="store_true", help="skip ORT's quantize_dynamic")
    parser.add_argument("--latency", action="store_true", help="compile x86 artifacts and time")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    tokenizer = load_tokenizer(str(zoo.get("minilm-l6").tokenizer()))
    reference = optimize("minilm-l6", "fold,cleanup").model
    ref_session = session(reference, optimize=True)
    rows = [describe("fp32", "fold,cleanup", reference, ref_session, ref_session, tokenizer)]
    if not args.no_ort:
        rows.append(ort_dynamic(reference, ref_session, tokenizer, out))
        write(rows, out)
    for name in args.only:
        pipeline = f"fold,quantize-insert{{{CONFIGS[name]}}},cleanup"
        began = time.perf_counter()
        result = optimize("minilm-l6", pipeline)
        seconds = time.perf_counter() - began
        row = describe(name, pipeline, result.model, None, ref_session, tokenizer)
        stats = result.records[1].stats
        row["pass_seconds"] = seconds
        row.update({k: v for k, v in stats.items() if not k.startswith(("layer.", "activation."))})
        row["float_layers"] = sorted(
            k.split(".", 1)[1].rsplit(".", 1)[0] for k in stats if k.endswith(".float_budget")
        )
        rows.append(row)
        log.info("%s: cosine %.5f recall@1 %.4f", name, row["mean_cosine"], row["recall_at_1"])
        write(rows, out)
    if args.latency:
        latency(rows, reference, tokenizer, out, args.runs)
        write(rows, out)


def describe(
    name: str,
    pipeline: str,
    model: Model,
    candidate: Any,
    reference: Any,
    tokenizer: Any,
) -> dict[str, Any]:
    """Fidelity of a model run as written and with ORT's optimizations, and its size."""
    proto = model.to_onnx()
    exact = fidelity(candidate or session(proto), reference, tokenizer).as_dict()
    fused = fidelity(session(proto, optimize=True), reference, tokenizer)
    return {
        "name": name,
        "pipeline": pipeline,
        **exact,
        "ort_opt_mean_cosine": fused.mean_cosine,
        "ort_opt_recall_at_1": fused.recall_at_1,
        "model_bytes": proto.ByteSize(),
    }


def ort_dynamic(reference: Model, ref_session: Any, tokenizer: Any, out: Path) -> dict[str, Any]:
    """ONNX Runtime's quantize_dynamic(per_channel=True) on MatMul, on the same fp32 model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        source, target = Path(tmp) / "fp32.onnx", out / "minilm-ort-dynamic.onnx"
        onnx.save(reference.to_onnx(), os.fspath(source))
        quantize_dynamic(
            source,
            target,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
        )
    proto = onnx.load(os.fspath(target))
    row = describe(
        "ort-quantize_dynamic-per-channel",
        "quantize_dynamic(per_channel=True, op_types_to_quantize=['MatMul'])",
        Model.from_onnx(proto),
        session(proto, optimize=True),
        ref_session,
        tokenizer,
    )
    row["model_bytes"] = target.stat().st_size
    return row


def latency(
    rows: list[dict[str, Any]], reference: Model, tokenizer: Any, out: Path, runs: int
) -> None:
    """Compile nlpress's int8 models for x86 at 1x128 and time them beside ORT fp32 and int8."""
    import nlpress

    feeds = dict(
        encode(tokenizer, [" ".join(a for a, _ in evaluation_pairs()[:12])], 128, "max_length")
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    fp32 = ort.InferenceSession(reference.to_onnx().SerializeToString(), options)
    ort_int8 = ort.InferenceSession(os.fspath(out / "minilm-ort-dynamic.onnx"), options)
    os.environ.setdefault("TVM_NUM_THREADS", "2")
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    for row in rows:
        if row["name"] == "fp32":
            row["ort_ms"] = _median(lambda: fp32.run(None, feeds), runs)
            continue
        if row["name"].startswith("ort-"):
            row["ort_ms"], row["ort_fp32_ms"] = alternate(
                lambda: ort_int8.run(None, feeds), lambda: fp32.run(None, feeds), runs
            )
            continue
        path = out / f"x86-quantize-{row['name']}"
        try:
            nlpress.compile("minilm-l6", "x86", path, pipeline=row["pipeline"], shapes=SHAPES)
        except Exception as exc:  # the lowering may not take every QDQ form yet
            log.warning("%s: compile failed: %s: %s", row["name"], type(exc).__name__, exc)
            row["artifact_error"] = f"{type(exc).__name__}: {exc}"
            continue
        artifact = nlpress.load(path)
        row["artifact_ms"], row["ort_fp32_ms"] = alternate(
            lambda a=artifact: a.run(None, feeds), lambda: fp32.run(None, feeds), runs
        )
        row["model_so_bytes"] = (path / "model.so").stat().st_size


def alternate(
    first: Callable[[], Any], second: Callable[[], Any], runs: int
) -> tuple[float, float]:
    """Median milliseconds of two callables run alternately after three warm-up rounds."""
    for _ in range(3):
        first(), second()
    a, b = [], []
    for _ in range(runs):
        for fn, times in ((first, a), (second, b)):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3


def _median(fn: Callable[[], Any], runs: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def write(rows: list[dict[str, Any]], out: Path) -> None:
    """quantize.json and a markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantize.json").write_text(json.dumps(rows, indent=2, default=_plain))
    head = (
        "| model | mean cos | min cos | recall@1 (fp32) | ORT-optimized cos | bytes | "
        "float layers | x86 ms | ORT ms |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['name']} | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | "
        f"{r['recall_at_1']:.4f} ({r['reference_recall_at_1']:.4f}) | "
        f"{r['ort_opt_mean_cosine']:.4f} | {r['model_bytes'] / 1e6:.1f} MB | "
        f"{len(r.get('float_layers', []))} | {_ms(r.get('artifact_ms'))} | {_ms(r.get('ort_ms'))} |"
        for r in rows
    ]
    (out / "quantize.md").write_text(head + "\n".join(lines) + "\n")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    main()
