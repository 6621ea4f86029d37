"""prune-sparsify on all-MiniLM-L6-v2: fidelity, size and latency per pattern, criterion, recovery.

Every configuration runs `fold,prune-sparsify{...},cleanup` at batch 1, sequence 128 (static) and
is compared with the unpruned model folded the same way: sentence-embedding cosine and recall@1
on the evaluation text (`nlpress.models.metrics.fidelity`), parameters and weight-MatMul FLOPs per
token from the pass's stats. Latency comes last, in one phase: each pruned shape family (neurons,
heads, dense-with-zeros for unstructured and N:M; recovery changes values, not shapes) is
compiled into an x86 artifact exactly as the unpruned model is, and each artifact is timed
against the unpruned one in alternating runs (medians). Writes prune.json and prune.md into --out;
rows already there for other configurations are kept, so the fidelity phase can run in parts
and the latency phase once at the end (it reads the pruned models saved under --work).

    python benchmarks/prune.py fidelity [--only NAME ...] [--out DIR] [--work DIR]
    python benchmarks/prune.py compile [--out DIR] [--work DIR]     (optional: compile ahead)
    python benchmarks/prune.py latency [--runs N] [--out DIR] [--work DIR]

An artifact folder already under --work is reused; delete --work to recompile.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import machine
import numpy as np

import nlpress
from nlpress.compiler import optimize
from nlpress.ir import Model, load_model, save_model
from nlpress.ir.verify import session
from nlpress.models import zoo
from nlpress.models.metrics import fidelity
from nlpress.models.text import calibration_sentences, encode, evaluation_pairs, load_tokenizer

LOG = logging.getLogger("benchmarks.prune")
SHAPES = {"input_ids": (1, 128), "attention_mask": (1, 128), "token_type_ids": (1, 128)}
NEURONS = "pattern=neurons sparsity=0.25"
HEADS = "pattern=heads sparsity=0.1667"
# name -> (pass options, latency family: configs of one family compile to the same shapes)
CONFIGS: Mapping[str, tuple[str, str]] = {
    "neurons-obs-seq": (f"{NEURONS} criterion=obs damping=0.001 sequential=true", "neurons"),
    "neurons-obs-oneshot": (f"{NEURONS} criterion=obs damping=0.001 sequential=false", "neurons"),
    "neurons-act-seq": (f"{NEURONS} criterion=activation sequential=true", "neurons"),
    "neurons-act-norec": (f"{NEURONS} criterion=activation recover=false", "neurons"),
    "neurons-obs-seq-global": (
        f"{NEURONS} criterion=obs damping=0.001 allocation=global sequential=false",
        "neurons-global",
    ),
    "neurons-obs-sensitivity": (
        f"{NEURONS} criterion=obs damping=0.001 allocation=sensitivity sequential=false",
        "neurons-sensitivity",
    ),
    "neurons-obs-sensitivity-distill": (
        f"{NEURONS} criterion=obs damping=0.001 allocation=sensitivity sequential=false "
        "distill-epochs=5",
        "neurons-sensitivity",
    ),
    "heads-obs-seq": (f"{HEADS} criterion=obs damping=0.001 sequential=true", "heads"),
    "heads-act-seq": (f"{HEADS} criterion=activation sequential=true", "heads"),
    "heads-act-oneshot": (f"{HEADS} criterion=activation sequential=false", "heads"),
    "heads-act-norec": (f"{HEADS} criterion=activation recover=false", "heads"),
    "2:4-mag-norec": ("pattern=2:4 criterion=magnitude recover=false", "dense-zeros-2:4"),
    "2:4-act-norec": ("pattern=2:4 criterion=activation recover=false", "dense-zeros-2:4"),
    "2:4-act-oneshot": (
        "pattern=2:4 criterion=activation recover=true sequential=false",
        "dense-zeros-2:4",
    ),
    "2:4-act-seq": (
        "pattern=2:4 criterion=activation recover=true sequential=true",
        "dense-zeros-2:4",
    ),
    "unstructured-50-act-norec": (
        "pattern=unstructured sparsity=0.5 criterion=activation recover=false",
        "dense-zeros-50%",
    ),
    "unstructured-50-act-seq": (
        "pattern=unstructured sparsity=0.5 criterion=activation recover=true sequential=true",
        "dense-zeros-50%",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["fidelity", "compile", "latency"])
    parser.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--work", default="benchmarks/out/prune", help="models and artifacts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(str(zoo.get("minilm-l6").tokenizer()))
    reference = optimize("minilm-l6", "fold,cleanup", shapes=SHAPES).model
    if args.phase == "fidelity":
        for name in args.only:
            row, model = measure(name, reference, tokenizer)
            save_model(model, work / f"{name}.onnx")
            write(merged(read(out), [row]), out)
    elif args.phase == "compile":
        compile_all([r for r in read(out) if r["name"] in CONFIGS], work, reference)
    else:
        rows = [r for r in read(out) if r["name"] in CONFIGS]
        latencies(rows, work, reference, tokenizer, args.runs)
        write(rows, out)


def read(out: Path) -> list[dict[str, Any]]:
    """The rows written so far (none if there is no prune.json yet)."""
    path = out / "prune.json"
    return list(json.loads(path.read_text())) if path.exists() else []


def merged(rows: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` with `new` replacing the rows of the same name, in CONFIGS order."""
    by_name = {r["name"]: r for r in rows} | {r["name"]: r for r in new}
    order = list(CONFIGS)
    return sorted(
        by_name.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else len(order)
    )


def measure(name: str, reference: Model, tokenizer: Any) -> tuple[dict[str, Any], Model]:
    """Prune with one configuration; fidelity and size against the reference."""
    options, family = CONFIGS[name]
    pipeline = f"fold,prune-sparsify{{{options}}},cleanup"
    began = time.perf_counter()
    result = optimize("minilm-l6", pipeline, shapes=SHAPES)
    seconds = time.perf_counter() - began
    stats = result.records[1].stats
    candidate, ref = session(result.model, optimize=True), session(reference, optimize=True)
    quality = fidelity(candidate, ref, tokenizer).as_dict()
    row = {
        "name": name,
        "pipeline": pipeline,
        "latency_family": family,
        "pass_seconds": seconds,
        "calibration_sentences": len(calibration_sentences()),
        **quality,
        **{k: v for k, v in stats.items() if ":" not in k},
        "layer_sparsity": {k: v for k, v in stats.items() if k.startswith("sparsity:")},
    }
    LOG.info("%s: cosine %.4f (min %.4f), recall@1 %.3f, %.0f s", name, quality["mean_cosine"],
             quality["min_cosine"], quality["recall_at_1"], seconds)  # fmt: skip
    return row, result.model


def latencies(
    rows: list[dict[str, Any]], work: Path, reference: Model, tokenizer: Any, runs: int
) -> None:
    """Time one artifact per shape family against the unpruned one (compiling what is missing)."""
    dense = artifact(reference, work / "artifact-unpruned")
    feeds = latency_feeds(tokenizer)
    timed: dict[str, dict[str, Any]] = {}
    for family, first in families(rows).items():
        compiled = artifact(load_model(work / f"{first}.onnx"), work / f"artifact-{family}")
        pruned, unpruned = alternate(
            lambda a=compiled: a.run(None, feeds), lambda: dense.run(None, feeds), runs
        )
        timed[family] = {
            "latency_ms": pruned,
            "reference_latency_ms": unpruned,
            "speedup": unpruned / pruned,
            "latency_from": first,
        }
        LOG.info("%s: %.1f ms vs %.1f ms unpruned", family, pruned, unpruned)
    for row in rows:
        row.update(timed[row["latency_family"]])


def compile_all(rows: list[dict[str, Any]], work: Path, reference: Model) -> None:
    """Compile the unpruned artifact and one per shape family (before timing, which is alone)."""
    artifact(reference, work / "artifact-unpruned")
    for family, first in families(rows).items():
        artifact(load_model(work / f"{first}.onnx"), work / f"artifact-{family}")


def families(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Each latency family's first configuration (recovery changes values, not shapes)."""
    first: dict[str, str] = {}
    for row in rows:
        first.setdefault(row["latency_family"], row["name"])
    return first


def artifact(model: Model, path: Path) -> Any:
    """The x86 artifact at `path`, compiled from `model` (already pruned) as the reference is."""
    if not (path / "manifest.json").exists():
        source = path.with_suffix(".onnx")
        save_model(model, source)
        LOG.info("compiling %s", path.name)
        nlpress.compile(str(source), "x86", path, pipeline="fold", shapes=SHAPES)
    return nlpress.load(path)


def latency_feeds(tokenizer: Any) -> dict[str, np.ndarray]:
    text = " ".join(a for a, _ in evaluation_pairs()[:12])
    return dict(encode(tokenizer, [text], 128, "max_length"))


def alternate(
    first: Callable[[], Any], second: Callable[[], Any], runs: int
) -> tuple[float, float]:
    """Median milliseconds of `first` and `second`, run alternately after a warm-up."""
    for _ in range(3):
        first(), second()
    a, b = [], []
    for _ in range(runs):
        for fn, times in ((first, a), (second, b)):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3


def write(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "prune.json").write_text(json.dumps(rows, indent=2))
    head = (
        "| config | mean cos | min cos | recall@1 (ref) | nonzero params | FLOPs/token | "
        "layer err before -> after | x86 ms (unpruned) | speedup | calibration |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    nan = float("nan")
    lines = [
        f"| {r['name']} | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | "
        f"{r['recall_at_1']:.3f} ({r['reference_recall_at_1']:.3f}) | "
        f"{r['nonzero_params_after'] / 1e6:.2f}M / {r['params_before'] / 1e6:.2f}M | "
        f"{r['nonzero_matmul_flops_per_token_after'] / 1e6:.1f}M / "
        f"{r['matmul_flops_per_token_before'] / 1e6:.1f}M | "
        f"{r.get('recovery_error_before', nan):.4f} -> {r.get('recovery_error_after', nan):.4f} | "
        f"{r.get('latency_ms', nan):.1f} ({r.get('reference_latency_ms', nan):.1f}) | "
        f"{r.get('speedup', nan):.2f}x | {r['calibration_sentences']} |"
        for r in rows
    ]
    notes = (
        "\nCalibrated on the zoo's calibration sentences (how many: the last column); "
        "batch 1, sequence 128, x86 artifacts compiled with `pipeline=fold` and the same "
        "static shapes as the unpruned one; latency per shape family (recovery changes values, "
        "not shapes), medians of alternating runs against the unpruned artifact. Unstructured "
        "and N:M artifacts are dense with zeros: TVM 0.27 has no sparse matmul.\n"
    )
    (out / "prune.md").write_text(head + "\n".join(lines) + "\n" + notes)
    machine.write_section(
        "prune",
        "prune-sparsify on all-MiniLM-L6-v2 (benchmarks/prune.py)",
        (head + "\n".join(lines) + "\n" + notes).splitlines(),
        machine.command(__file__, sys.argv[1:]),
    )


if __name__ == "__main__":
    main()
