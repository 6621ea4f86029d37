"""nlpress x86 artifacts beside ONNX Runtime on all-MiniLM-L6-v2: latency ratio and fidelity.

For each (batch, seq) it compiles minilm-l6 with static shapes (default schedules, or the
tuning records of --records), then runs the artifact and ONNX Runtime fp32 (the original
model, all graph optimizations, 2 intra-op threads) alternately on real-text feeds after a
warm-up (each timed run after a pause that lets both thread pools go idle; see
nlpress.targets.bench), and reports the medians, the ratio nlpress/ORT, the compile time and
the largest absolute difference of the outputs. --profile adds the time of each kernel at
1x128, with TVM's plain loop nests and with the schedules. Writes cpu.json and cpu.md into --out.

    python benchmarks/cpu.py [--shapes 1x128 8x128] [--runs 20] [--settle 0.2]
                             [--records DIR] [--profile]

Tuning records for --records: one run per shape into the same DIR (256 trials took 329 s at
1x128 and 560 s at 8x128 here; so far they measure within noise of the default schedules):

    nlpress compile minilm-l6 -t x86 --shape input_ids=1x128 --shape attention_mask=1x128 \
        --shape token_type_ids=1x128 --tune 256 --tuning-records DIR -o OUT
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("benchmarks.cpu")

MODEL = "minilm-l6"
THREADS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=["1x128", "8x128"])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument(
        "--settle", type=float, default=0.2, help="seconds of pause before each timed run"
    )
    parser.add_argument("--records", help="tuning records folder to build with")
    parser.add_argument("--profile", action="store_true", help="time each kernel at 1x128")
    parser.add_argument("--out", default="benchmarks/out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    out = Path(args.out)
    rows = [measure(shape, args) for shape in args.shapes]
    profile = kernel_profile(args.records) if args.profile else None
    write(rows, profile, out, args)


def measure(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    """Compile at one (batch, seq) and time the artifact against ONNX Runtime."""
    from nlpress import compile as nlpress_compile
    from nlpress.models import zoo
    from nlpress.targets import tuning
    from nlpress.targets.bench import compare_with_ort

    batch, seq = (int(x) for x in shape.split("x"))
    shapes = {n: (batch, seq) for n in ("input_ids", "attention_mask", "token_type_ids")}
    with tempfile.TemporaryDirectory(prefix="nlpress-bench-") as tmp:
        began = time.perf_counter()
        with tuning.using_records(args.records):
            artifact = nlpress_compile(MODEL, "x86", Path(tmp) / "x86", shapes=shapes)
        compile_s = time.perf_counter() - began
        result = compare_with_ort(
            artifact,
            zoo.model_path(MODEL),
            runs=args.runs,
            feeds=text_feeds(batch, seq),
            threads=args.threads,
            settle=args.settle,
        )
    row = {"shape": shape, "compile_s": round(compile_s, 1), **result}
    row["records"] = args.records
    log.info(
        "%s: nlpress %.1f ms, ORT %.1f ms, ratio %.2f, compile %.1f s, max abs diff %.1e",
        shape, row["nlpress_ms"], row["ort_ms"], row["ratio"], compile_s, row["worst"],
    )  # fmt: skip
    return row


def text_feeds(batch: int, seq: int) -> dict[str, np.ndarray]:
    """Tokenized evaluation sentences, padded to `seq`."""
    from nlpress.models import text, zoo

    tokenizer = text.load_tokenizer(str(zoo.get(MODEL).tokenizer()))
    sentences = text.calibration_sentences()[:batch]
    feeds: dict[str, np.ndarray] = text.encode(
        tokenizer, sentences, max_length=seq, padding="max_length"
    )
    return feeds


def kernel_profile(records: str | None) -> dict[str, list[dict[str, Any]]]:
    """Per-kernel times at 1x128 with TVM's plain loop nests and with the schedules."""
    from nlpress import optimize
    from nlpress.targets import get_target
    from nlpress.targets.bench import profile_kernels

    shapes = {n: (1, 128) for n in ("input_ids", "attention_mask", "token_type_ids")}
    proto = optimize(MODEL, "fold", shapes=shapes).model.to_onnx()
    target = get_target("x86")
    return {
        "plain": profile_kernels(proto, target, default_schedules=False, repeat=1),
        "scheduled": profile_kernels(
            proto, target, records=Path(records) if records else None, repeat=7
        ),
    }


def write(
    rows: list[dict[str, Any]],
    profile: dict[str, list[dict[str, Any]]] | None,
    out: Path,
    args: argparse.Namespace,
) -> None:
    """cpu.json (everything) and cpu.md (the tables)."""
    out.mkdir(parents=True, exist_ok=True)
    tvm_threads = os.environ["TVM_NUM_THREADS"]
    facts = {
        "model": MODEL,
        "threads": {"nlpress": int(tvm_threads), "onnxruntime": args.threads},
        "rows": rows,
        "profile": profile,
    }
    (out / "cpu.json").write_text(json.dumps(facts, indent=2) + "\n")
    lines = [
        f"# nlpress x86 vs ONNX Runtime: {MODEL}, TVM {tvm_threads} threads, ORT {args.threads}",
        "",
        "| shape | nlpress ms | ORT ms | ratio | compile s | max abs diff | load avg | records |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['nlpress_ms']:.1f} | {r['ort_ms']:.1f} | {r['ratio']:.2f} "
            f"| {r['compile_s']:.1f} | {r['worst']:.1e} | {r['load_average'][0]:.1f} "
            f"| {r['records'] or '-'} |"
        )
    if profile:
        lines += ["", *profile_table(profile)]
    (out / "cpu.md").write_text("\n".join(lines) + "\n")
    log.info("wrote %s and %s", out / "cpu.json", out / "cpu.md")


def profile_table(profile: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown rows: each kernel's calls and total ms, plain and scheduled."""
    plain = {r["kernel"]: r for r in profile["plain"]}
    lines = [
        "Per kernel at 1x128, each timed alone (median); ms per model run = calls x one call.",
        "",
        "| kernel (1x128) | calls | plain ms | scheduled ms |",
        "|---|---|---|---|",
    ]
    for r in profile["scheduled"]:
        before = plain.get(r["kernel"], {}).get("total_ms", float("nan"))
        mark = "" if r["scheduled"] else " (unscheduled)"
        lines.append(f"| {r['kernel']}{mark} | {r['calls']} | {before:.2f} | {r['total_ms']:.2f} |")
    total_plain = sum(r["total_ms"] for r in profile["plain"])
    total = sum(r["total_ms"] for r in profile["scheduled"])
    lines.append(f"| total | | {total_plain:.1f} | {total:.1f} |")
    return lines


if __name__ == "__main__":
    main()
