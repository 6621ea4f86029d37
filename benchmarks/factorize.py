"""factorize-matmul on minilm-l6: fidelity per method, randomized vs exact SVD, and latency.

    python benchmarks/factorize.py [--param-ratio 0.6] [--no-compile] [--only PART]
        [--out benchmarks/results] [--models benchmarks/out]

Fidelity: the encoder's FFN and attention projections factorized to param-ratio (0.6 cuts their
parameters by 40%), each method with and without recovery (and activation with recovery under
allocation=sensitivity, then also distilled for DISTILL_EPOCHS), embedded on the evaluation text
against the fp32 model. Latency: the dense model and each factorized rank layout that the
fidelity part saved (activation with recovery, uniform and sensitivity-allocated ranks), at
1x128, compiled for this x86 CPU the same way (`fold`, default schedules), and both in ONNX
Runtime, timed alternately (2 threads each, a pause before each run, medians), beside their FLOP
ratio. Writes factorize.json and factorize.md under --out; models and artifacts go under
--models (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import machine
import numpy as np

import nlpress
from nlpress.ir import Model, load_model, save_model
from nlpress.ir.graph import weighted_matmuls
from nlpress.ir.verify import session
from nlpress.models import zoo
from nlpress.models.metrics import fidelity
from nlpress.models.text import encode, load_tokenizer
from nlpress.passes.factorize_matmul import MARK_U, MARK_V, randomized_svd

MODEL = "minilm-l6"
SHAPES = {"input_ids": (1, 128), "attention_mask": (1, 128), "token_type_ids": (1, 128)}
DISTILL_EPOCHS = 100  # on the 1,299 calibration sentences: about 20 s an epoch on 2 idle cores
# (method, recover, allocation, distill epochs)
CONFIGS = [
    ("svd", False, "uniform", 0),
    ("svd", True, "uniform", 0),
    ("activation", False, "uniform", 0),
    ("activation", True, "uniform", 0),
    ("activation", True, "sensitivity", 0),
    ("activation", True, "sensitivity", DISTILL_EPOCHS),
]
# The rank layouts timed, each by a fidelity configuration whose saved model stands for it
# (recovery and distillation change values, not shapes).
LATENCY_LAYOUTS = {
    "uniform": ("activation", True, "uniform", 0),
    "sensitivity": ("activation", True, "sensitivity", 0),
}
LAYERS, HIDDEN = 6, 384  # all-MiniLM-L6-v2's encoder, for the attention FLOPs
THREADS = 2
SETTLE_S = 0.2  # longer than either runtime's worker threads keep spinning after a run


def pipeline(method: str, recover: bool, allocation: str, ratio: float, distill: int = 0) -> str:
    options = (
        f"param-ratio={ratio} method={method} recover={str(recover).lower()} "
        f"allocation={allocation} include=encoder distill-epochs={distill}"
    )
    return f"fold,factorize-matmul{{{options}}},cleanup"


def model_file(method: str, recover: bool, allocation: str, distill: int) -> str:
    return f"minilm-{method}-{'rec' if recover else 'plain'}-{allocation}-d{distill}.onnx"


def model_params(model: Model) -> int:
    return int(sum(np.asarray(init.dims).prod() for init in model.to_onnx().graph.initializer))


def fidelity_rows(ratio: float, out: Path) -> tuple[list[dict[str, object]], dict[str, float]]:
    tokenizer = load_tokenizer(str(zoo.get(MODEL).tokenizer()))
    reference_model = load_model(zoo.model_path(MODEL))
    reference = session(reference_model, optimize=True)
    rows = []
    for method, recover, allocation, distill in CONFIGS:
        text = pipeline(method, recover, allocation, ratio, distill)
        began = time.perf_counter()
        result = nlpress.optimize(MODEL, text)
        seconds = time.perf_counter() - began
        stats = next(r.stats for r in result.records if r.text.startswith("factorize-matmul"))
        save_model(result.model, out / model_file(method, recover, allocation, distill))
        f = fidelity(session(result.model, optimize=True), reference, tokenizer)
        rows.append(
            {
                "method": method,
                "recover": recover,
                "allocation": allocation,
                "distill_epochs": distill,
                "pipeline": text,
                "mean_cosine": f.mean_cosine,
                "min_cosine": f.min_cosine,
                "recall_at_1": f.recall_at_1,
                "reference_recall_at_1": f.reference_recall_at_1,
                "spearman": f.spearman,
                "matrix_params_before": stats["params_before"],
                "matrix_params_after": stats["params_after"],
                "model_params": model_params(result.model),
                "flops_ratio": stats["flops_after"] / stats["flops_before"],
                "ranks": factor_ranks(result.model),
                "layer_output_error_mean": stats.get("output_error_mean", float("nan")),
                "pass_seconds": seconds,
                **{k: v for k, v in stats.items() if k.startswith("distill_")},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows, {"model_params": model_params(reference_model)}


def flop_ratios(dense: Model, factorized: Model, tokens: int) -> dict[str, float]:
    """FLOPs per token of the constant-weight matmuls (factorized / dense), and of the encoder.

    The encoder adds what factorizing leaves alone: the attention scores and context
    (2 x 2 tokens hidden per token and layer).
    """
    before, after = matmul_macs(dense), matmul_macs(factorized)
    attention = LAYERS * 2 * tokens * HIDDEN
    return {
        "matrix_flops_ratio": after / before,
        "encoder_flops_ratio": (after + attention) / (before + attention),
    }


def matmul_macs(model: Model) -> int:
    """Multiply-adds per token of every MatMul/Gemm with a constant weight."""
    return sum(int(layer.weight.values.size) for layer in weighted_matmuls(model.graph))


def factor_ranks(model: Model) -> dict[str, list[int]]:
    """The ranks of a factorized model, smallest first, by the shape of the layer they replaced."""
    layers = {layer.node.name: layer.weight.values.shape for layer in weighted_matmuls(model.graph)}
    ranks: dict[str, set[int]] = {}
    for name, (k, r) in layers.items():
        if name.endswith(MARK_U):
            n = layers[name[: -len(MARK_U)] + MARK_V][1]
            ranks.setdefault(f"{k}x{n}", set()).add(r)
    return {shape: sorted(found) for shape, found in ranks.items()}


def randomized_vs_exact(ratio: float) -> list[dict[str, float]]:
    model = load_model(zoo.model_path(MODEL))
    seen: dict[tuple[int, int], np.ndarray] = {}
    for layer in weighted_matmuls(model.graph):
        if "encoder" in (layer.node.name or ""):
            seen.setdefault(layer.weight.values.shape, np.asarray(layer.weight.values))
    rows = []
    for (k, n), weight in seen.items():
        w = weight.astype(np.float64)
        rank = int(ratio * k * n / (k + n))
        exact_s, exact_err = _timed(lambda w=w, rank=rank: _exact(w, rank))
        random_s, random_err = _timed(lambda w=w, rank=rank: _randomized(w, rank))
        rows.append(
            {
                "k": k,
                "n": n,
                "r": rank,
                "exact_ms": exact_s * 1e3,
                "randomized_ms": random_s * 1e3,
                "exact_weight_error": exact_err,
                "randomized_weight_error": random_err,
            }
        )
    return rows


def _timed(work, repeats: int = 5) -> tuple[float, float]:
    times, value = [], 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        value = work()
        times.append(time.perf_counter() - began)
    return statistics.median(times), value


def _exact(w: np.ndarray, rank: int) -> float:
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    return _error(w, (u[:, :rank] * s[:rank]) @ vt[:rank])


def _randomized(w: np.ndarray, rank: int) -> float:
    u, s, vt = randomized_svd(w, rank, seed=0)
    return _error(w, (u * s) @ vt)


def _error(w: np.ndarray, approx: np.ndarray) -> float:
    return float(np.linalg.norm(w - approx) / np.linalg.norm(w))


def latency(models: Path, compile_x86: bool, runs: int = 30) -> dict[str, object]:
    """The dense model against each factorized rank layout the fidelity part saved, at 1x128.

    Every model goes through `fold` at the static shapes, for ONNX Runtime and for the x86
    artifact alike.
    """
    tokenizer = load_tokenizer(str(zoo.get(MODEL).tokenizer()))
    feeds = dict(encode(tokenizer, ["a sentence to embed for timing"], 128, "max_length"))
    dense = load_model(zoo.model_path(MODEL))
    dense_runtimes = runtimes(dense, models / "x86-dense", compile_x86)
    layouts = []
    for layout, config in LATENCY_LAYOUTS.items():
        path = models / model_file(*config)
        if not path.exists():
            raise SystemExit(f"{path.name} is missing: run the fidelity part first")
        factorized = load_model(path)
        row: dict[str, object] = {"layout": layout, "model": path.name}
        row.update(ranks=factor_ranks(factorized), **flop_ratios(dense, factorized, 128))
        timed = runtimes(factorized, models / f"x86-{layout}", compile_x86)
        for prefix, runtime in timed.items():
            pair = {"dense": dense_runtimes[prefix], "factorized": runtime}
            medians = _alternating(pair, feeds, runs)
            row.update({f"{prefix}_{name}_median_ms": ms for name, ms in medians.items()})
            row[f"{prefix}_speedup"] = medians["dense"] / medians["factorized"]
        layouts.append(row)
        print(json.dumps(row), flush=True)
    return {"batch": 1, "sequence": 128, "runs": runs, "threads": THREADS, "layouts": layouts}


def runtimes(model: Model, artifact: Path, compile_x86: bool) -> dict[str, object]:
    """The model in ONNX Runtime and (with compile_x86) as an x86 artifact, at SHAPES."""
    static = nlpress.optimize(model, "fold", shapes=SHAPES).model
    sessions = {"ort": ort_session(static)}
    if compile_x86:
        path = nlpress.compile(model, "x86", artifact, pipeline="fold", shapes=SHAPES)
        sessions["x86"] = nlpress.load(path, threads=THREADS)
    return sessions


def ort_session(model: Model) -> object:
    """An ONNX Runtime session with THREADS intra-op threads, all graph optimizations on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    return ort.InferenceSession(
        model.to_onnx().SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _alternating(
    sessions: dict[str, object], feeds: dict[str, np.ndarray], runs: int
) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for s in sessions.values():
        for _ in range(2):
            s.run(None, _feeds_for(s, feeds))  # type: ignore[attr-defined]
    for _ in range(runs):
        for name, s in sessions.items():
            one = _feeds_for(s, feeds)
            time.sleep(SETTLE_S)
            began = time.perf_counter()
            s.run(None, one)  # type: ignore[attr-defined]
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def _feeds_for(s: object, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {i.name for i in s.get_inputs()}  # type: ignore[attr-defined]
    return {k: v for k, v in feeds.items() if k in wanted}


def markdown(report: dict[str, object]) -> str:
    lines = [
        f"# factorize-matmul on {MODEL}, encoder FFN + attention, "
        f"param-ratio={report['param_ratio']}",
        "",
        "| method | recover | allocation | distill epochs | mean cos | min cos | recall@1 "
        "| matrix params | model params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["fidelity"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {r['method']} | {r['recover']} | {r.get('allocation', 'uniform')} "
            f"| {r.get('distill_epochs', 0)} | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} "
            f"| {r['recall_at_1']:.4f} | {r['matrix_params_before'] / 1e6:.2f}M -> "
            f"{r['matrix_params_after'] / 1e6:.2f}M | {r['model_params'] / 1e6:.2f}M |"
        )
    lines += [
        "",
        "| k x n | r | exact ms | randomized ms | exact weight err | randomized weight err |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["randomized"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {r['k']}x{r['n']} | {r['r']} | {r['exact_ms']:.1f} | {r['randomized_ms']:.1f} "
            f"| {r['exact_weight_error']:.4f} | {r['randomized_weight_error']:.4f} |"
        )
    lines += _latency_lines(report.get("latency"))
    return "\n".join(lines)


def _latency_lines(facts: object) -> list[str]:
    if not isinstance(facts, dict) or not facts.get("layouts"):
        return []
    lines = [
        "",
        f"Latency at 1x128, {facts['threads']} threads, medians of {facts['runs']} alternating "
        "runs against the dense model, both through `fold` at the same static shapes:",
        "",
        "| ranks | runtime | dense ms | factorized ms | speedup | matrix FLOP ratio "
        "| encoder FLOP ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in facts["layouts"]:
        for prefix, label in (("ort", "ONNX Runtime"), ("x86", "nlpress x86")):
            if f"{prefix}_speedup" in row:
                lines.append(
                    f"| {row['layout']} | {label} | {row[f'{prefix}_dense_median_ms']:.2f} "
                    f"| {row[f'{prefix}_factorized_median_ms']:.2f} "
                    f"| {row[f'{prefix}_speedup']:.2f}x | {row['matrix_flops_ratio']:.3f} "
                    f"| {row['encoder_flops_ratio']:.3f} |"
                )
    lines += ["", *(f"Ranks, {r['layout']}: {r['ranks']}" for r in facts["layouts"]), ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--param-ratio", type=float, default=0.6)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--only", choices=["fidelity", "randomized", "latency"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--models", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.models.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {"param_ratio": args.param_ratio, "fidelity": [], "randomized": []}
    if args.only in (None, "randomized"):
        report["randomized"] = randomized_vs_exact(args.param_ratio)
        print(json.dumps(report["randomized"]), flush=True)
    if args.only in (None, "fidelity"):
        rows, reference = fidelity_rows(args.param_ratio, args.models)
        report["fidelity"], report["reference"] = rows, reference
    if args.only in (None, "latency"):
        report["latency"] = latency(args.models, not args.no_compile)
        print(json.dumps(report["latency"]), flush=True)
    path = args.out / "factorize.json"
    if args.only and path.exists():  # one part: keep the other parts of the last report
        report = {**json.loads(path.read_text()), **_parts(report, args.only)}
    path.write_text(json.dumps(report, indent=2))
    (args.out / "factorize.md").write_text(markdown(report))
    machine.write_section(
        "factorize",
        "factorize-matmul on all-MiniLM-L6-v2 (benchmarks/factorize.py)",
        markdown(report).rstrip().splitlines(),
        machine.command(__file__, sys.argv[1:]),
    )


def _parts(report: dict[str, object], only: str) -> dict[str, object]:
    keys = {"fidelity": ("fidelity", "reference"), "randomized": ("randomized",)}
    return {k: report[k] for k in keys.get(only, (only,)) if k in report}


if __name__ == "__main__":
    main()
