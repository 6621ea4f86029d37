"""prune-sparsify on all-MiniLM-L6-v2: fidelity, size and latency per pattern, criterion, recovery.

Every configuration runs `fold,prune-sparsify{...},cleanup` at batch 1, sequence 128 (static), and
is compared with the unpruned model folded the same way: sentence-embedding cosine and recall@1
on the evaluation text (`nlpress.models.metrics.fidelity`), parameters and weight-MatMul FLOPs per
token from the pass's stats, and the median latency of alternating runs in ONNX Runtime (or of
compiled x86 artifacts with `--artifact`). Writes prune.json and prune.md into --out.

    python benchmarks/prune.py [--only NAME ...] [--artifact] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nlpress.compiler import optimize
from nlpress.ir import Model
from nlpress.ir.verify import session
from nlpress.models import zoo
from nlpress.models.metrics import fidelity
from nlpress.models.text import encode, evaluation_pairs, load_tokenizer

SHAPES = {"input_ids": (1, 128), "attention_mask": (1, 128), "token_type_ids": (1, 128)}
CONFIGS: Mapping[str, str] = {
    "neurons-act-rec": "pattern=neurons sparsity=0.25 criterion=activation recover=true",
    "neurons-act-norec": "pattern=neurons sparsity=0.25 criterion=activation recover=false",
    "neurons-mag-rec": "pattern=neurons sparsity=0.25 criterion=magnitude recover=true",
    "neurons-obs-rec": "pattern=neurons sparsity=0.25 criterion=obs recover=true",
    "neurons-obs-rec-d1e-3": "pattern=neurons sparsity=0.25 criterion=obs damping=0.001",
    "neurons-obs-budget": (
        "pattern=neurons sparsity=0.25 criterion=obs damping=0.001 budget-cosine=0.99"
    ),
    "heads-act-rec": "pattern=heads sparsity=0.1667 criterion=activation recover=true",
    "heads-act-norec": "pattern=heads sparsity=0.1667 criterion=activation recover=false",
    "2:4-mag-norec": "pattern=2:4 criterion=magnitude recover=false",
    "2:4-act-norec": "pattern=2:4 criterion=activation recover=false",
    "2:4-act-rec": "pattern=2:4 criterion=activation recover=true",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--artifact", action="store_true", help="time compiled x86 artifacts")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    tokenizer = load_tokenizer(str(zoo.get("minilm-l6").tokenizer()))
    reference = optimize("minilm-l6", "fold,cleanup", shapes=SHAPES).model
    feeds = latency_feeds(tokenizer)
    rows = []
    for name in args.only:
        rows.append(measure(name, CONFIGS[name], reference, tokenizer, feeds, args))
        write(rows, Path(args.out))


def measure(
    name: str,
    options: str,
    reference: Model,
    tokenizer: Any,
    feeds: dict[str, np.ndarray],
    args: argparse.Namespace,
) -> dict[str, Any]:
    pipeline = f"fold,prune-sparsify{{{options}}},cleanup"
    began = time.perf_counter()
    result = optimize("minilm-l6", pipeline, shapes=SHAPES)
    seconds = time.perf_counter() - began
    stats = result.records[1].stats
    candidate, ref = session(result.model, optimize=True), session(reference, optimize=True)
    quality = fidelity(candidate, ref, tokenizer).as_dict()
    latency = ort_latency(candidate, ref, feeds, args.runs)
    backend = "ort"
    if args.artifact:
        artifact = artifact_latency(result.model, reference, feeds, args.runs, Path(args.out))
        if artifact is not None:
            latency, backend = artifact, "x86 artifact"
    return {
        "name": name,
        "pipeline": pipeline,
        "pass_seconds": seconds,
        **quality,
        **{k: v for k, v in stats.items() if ":" not in k},
        "layer_sparsity": {k: v for k, v in stats.items() if k.startswith("sparsity:")},
        "latency_backend": backend,
        **latency,
    }


def latency_feeds(tokenizer: Any) -> dict[str, np.ndarray]:
    text = " ".join(a for a, _ in evaluation_pairs()[:12])
    return dict(encode(tokenizer, [text], 128, "max_length"))


def alternate(
    first: Callable[[], Any], second: Callable[[], Any], runs: int
) -> tuple[float, float]:
    for _ in range(3):
        first(), second()
    a, b = [], []
    for _ in range(runs):
        for fn, out in ((first, a), (second, b)):
            began = time.perf_counter()
            fn()
            out.append(time.perf_counter() - began)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3


def ort_latency(candidate: Any, reference: Any, feeds: dict[str, np.ndarray], runs: int) -> dict:
    pruned, dense = alternate(
        lambda: candidate.run(None, feeds), lambda: reference.run(None, feeds), runs
    )
    return {"latency_ms": pruned, "reference_latency_ms": dense, "speedup": dense / pruned}


def artifact_latency(
    model: Model, reference: Model, feeds: dict[str, np.ndarray], runs: int, out: Path
) -> dict | None:
    import nlpress

    try:
        paths = []
        for tag, m in (("pruned", model), ("dense", reference)):
            path = out / f"artifact-{tag}"
            nlpress.compile(m, "x86", path, pipeline="fold", shapes=SHAPES)
            paths.append(nlpress.load(path))
    except Exception as exc:
        print(f"artifact comparison unavailable: {type(exc).__name__}: {exc}")
        return None
    pruned, dense = alternate(
        lambda: paths[0].run(None, feeds), lambda: paths[1].run(None, feeds), runs
    )
    return {"latency_ms": pruned, "reference_latency_ms": dense, "speedup": dense / pruned}


def write(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "prune.json").write_text(json.dumps(rows, indent=2))
    head = (
        "| config | mean cos | min cos | recall@1 (ref) | params | FLOPs/token | "
        "layer err before -> after | latency ms (dense) | speedup |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['name']} | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | "
        f"{r['recall_at_1']:.3f} ({r['reference_recall_at_1']:.3f}) | "
        f"{r['nonzero_params_after'] / 1e6:.2f}M / {r['params_before'] / 1e6:.2f}M | "
        f"{r['nonzero_matmul_flops_per_token_after'] / 1e6:.1f}M / "
        f"{r['matmul_flops_per_token_before'] / 1e6:.1f}M | "
        f"{r.get('recovery_error_before', float('nan')):.4f} -> "
        f"{r.get('recovery_error_after', float('nan')):.4f} | "
        f"{r['latency_ms']:.1f} ({r['reference_latency_ms']:.1f}, {r['latency_backend']}) | "
        f"{r['speedup']:.2f}x |"
        for r in rows
    ]
    (out / "prune.md").write_text(head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
