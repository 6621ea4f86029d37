"""The planner's plans for accuracy budgets beside ONNX Runtime, as a user runs them.

For each budget B it runs `nlpress compile MODEL -t x86 --shape BxS --budget cosine=B
--objective OBJ` (calibrated on the zoo's calibration text, each plan verified on its held-out
part; sensitivities and kernel costs measured once and kept, so later budgets reuse them).
Beside the plans: the fp32 artifact (`nlpress compile MODEL -t x86 --shape BxS`), ORT on the
fp32 model, on its per-channel dynamic int8 model (`quantize_dynamic(per_channel=True,
op_types_to_quantize=["MatMul"])`) and on its default dynamic int8 model (`quantize_dynamic`
with its defaults).

All are timed in one fresh process with default settings (`nlpress.load(DIR)`, ORT's own
threads), in turn on evaluation sentences padded to the shape, with a pause before every run
(`nlpress.targets.bench.alternate`); ratios are medians of run-by-run ratios against ORT's
per-channel dynamic int8. Accuracy is scored on the evaluation text (the first sentence of each
pair, each padded to the shape): the mean and least cosine of mean-pooled sentence embeddings to
ORT fp32's. Bytes are each artifact's library over the fp32 artifact's (ORT: the model file
over the fp32 model file).

Writes frontier.json, frontier.md and frontier.png (measured points beside the frontier each
plan was chosen from, as predicted) into --out, and the "frontier" section of RESULTS.md
("frontier-size" for --objective size).

    python benchmarks/frontier.py [--budgets 0.995 0.99 0.98] [--objective latency]
                                  [--shape 1x128] [--runs 20] [--model minilm-l6]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import machine
import numpy as np

log = logging.getLogger("benchmarks.frontier")

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
FP32 = "nlpress fp32"
# The ORT models beside the plans: quantize_dynamic's options for each int8 one.
ORT_MODELS = {
    "ORT fp32": None,
    "ORT int8 per-channel": {"per_channel": True, "op_types_to_quantize": ["MatMul"]},
    "ORT int8 default": {},
}
BASELINE = "ORT int8 per-channel"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--budgets", nargs="*", type=float, default=[0.995, 0.99, 0.98])
    parser.add_argument("--objective", choices=["latency", "size"], default="latency")
    parser.add_argument("--shape", default="1x128")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--settle", type=float, default=0.2, help="seconds of pause before a run")
    parser.add_argument("--model", default="minilm-l6", help="a zoo model")
    parser.add_argument("--reuse", action="store_true", help="reuse the artifacts in --out")
    parser.add_argument("--out", default="benchmarks/out/frontier")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the child process's spec
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    out = Path(args.out)
    report: dict[str, Any] = {
        "model": args.model,
        "shape": args.shape,
        "objective": args.objective,
        "cpu": machine.cpu(),
        "commit": machine.commit(),
    }
    began = time.perf_counter()
    paths, plans = build(args, out)
    report["build_s"] = round(time.perf_counter() - began, 1)
    report["plans"] = plans
    spec = {
        "model": args.model,
        "shape": args.shape,
        "paths": paths,
        "runs": args.runs,
        "settle": args.settle,
    }
    report["measured"] = machine.in_fresh_process(__file__, spec)
    report["bytes"] = {name: file_bytes(path) for name, path in paths.items()}
    write(report, out)


def build(args: argparse.Namespace, out: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The artifacts (fp32 and one per budget) and the ORT models; each plan's record."""
    import nlpress
    from nlpress.models import zoo

    batch, seq = (int(x) for x in args.shape.split("x"))
    shapes = {name: (batch, seq) for name in INPUTS}
    paths = {FP32: out / f"fp32-{args.shape}"}
    paths |= {f"budget {b}": out / f"plan-{b}-{args.objective}-{args.shape}" for b in args.budgets}
    plans: dict[str, Any] = {}
    for name, path in paths.items():
        budget = None if name == FP32 else float(name.split()[1])
        if not (args.reuse and (path / "model.so").exists()):
            began = time.perf_counter()
            nlpress.compile(
                args.model, "x86", path, shapes=shapes, budget=budget, objective=args.objective
            )
            log.info("%s compiled in %.0f s", name, time.perf_counter() - began)
        if budget is not None:
            plans[name] = json.loads((path / "manifest.json").read_text())["plan"]
    found = {name: str(path) for name, path in paths.items()}
    source = zoo.model_path(args.model)
    for name, options in ORT_MODELS.items():
        found[name] = str(source if options is None else ort_int8(source, out, name, options))
    return found, plans


def ort_int8(source: Path, out: Path, name: str, options: dict[str, Any]) -> Path:
    """ORT's dynamic int8 model of `source` with `options`, made once into `out`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = out / f"{source.stem}-{name.replace(' ', '-')}.onnx"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(source, path, weight_type=QuantType.QInt8, **options)
    return path


def file_bytes(path: str) -> int:
    """An artifact's library bytes, or an ONNX file's."""
    folder = Path(path)
    return (folder / "model.so").stat().st_size if folder.is_dir() else folder.stat().st_size


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """(In the fresh process.) Time every runtime in turn; score each on the evaluation text."""
    import nlpress
    from nlpress.models import text, zoo
    from nlpress.targets.bench import alternate, ort_session, paired_ratio

    batch, seq = (int(x) for x in spec["shape"].split("x"))
    tokenizer = text.load_tokenizer(str(zoo.get(spec["model"]).tokenizer()))
    sentences = [a for a, _ in text.evaluation_pairs()]
    sessions = {
        name: nlpress.load(path) if name.startswith(("nlpress", "budget")) else ort_session(path, 0)
        for name, path in spec["paths"].items()
    }
    feeds = text.encode(tokenizer, sentences[:batch], seq, "max_length")
    fns = [lambda s=session: s.run(None, feeds) for session in sessions.values()]
    times = dict(zip(sessions, alternate(fns, spec["runs"], settle=spec["settle"]), strict=True))
    scored: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    for start in range(0, len(sentences) - batch + 1, batch):
        one = text.encode(tokenizer, sentences[start : start + batch], seq, "max_length")
        pooled = {name: _pooled(s.run(None, one)[0], one) for name, s in sessions.items()}
        for name, embedding in pooled.items():
            scored[name].append((embedding * pooled["ORT fp32"]).sum(-1))
    return {
        "runs": spec["runs"],
        "settle_s": spec["settle"],
        "sentences": sum(len(c) for c in scored["ORT fp32"]),
        "median_ms": {n: round(statistics.median(t) * 1e3, 3) for n, t in times.items()},
        "ratio": {n: paired_ratio(t, times[BASELINE]) for n, t in times.items()},
        "cosine": {
            name: {"mean": round(float(np.mean(c)), 5), "min": round(float(np.min(c)), 5)}
            for name, c in ((n, np.concatenate(c)) for n, c in scored.items())
        },
        "load_average": machine.cpu()["load_average"],
    }


def _pooled(tokens: np.ndarray, feeds: dict[str, np.ndarray]) -> np.ndarray:
    from nlpress.models.metrics import mean_pool

    return np.asarray(mean_pool(tokens, feeds["attention_mask"]))


def write(report: dict[str, Any], out: Path) -> None:
    """frontier.json, frontier.md, frontier.png and the RESULTS.md section."""
    measured, sizes = report["measured"], report["bytes"]
    lines = [
        f"{report['model']} at {report['shape']}, objective {report['objective']}; medians of "
        f"{measured['runs']} runs of each in turn ({measured['settle_s']} s pause before each) in "
        "one fresh process with default settings; ratios are medians of run-by-run ratios to "
        f"{BASELINE}. Cosine: mean (least) over {measured['sentences']} evaluation sentences "
        "to ORT fp32; held-out: the plan's cosine on the held-out calibration text. Bytes: the "
        "library (ORT: the model file) over the fp32 one.",
        "",
        "| runtime | ms | ratio to ORT int8 per-channel | cosine (least) | held-out | bytes | "
        "share of fp32 | plan |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in measured["median_ms"]:
        plan = report["plans"].get(name)
        fp32 = sizes[FP32] if not name.startswith("ORT") else sizes["ORT fp32"]
        cos = measured["cosine"][name]
        lines.append(
            f"| {name} | {measured['median_ms'][name]:.2f} | {measured['ratio'][name]:.3f} | "
            f"{cos['mean']:.5f} ({cos['min']:.4f}) | "
            f"{plan['verified_cosine'] if plan else ''} | {sizes[name] / 2**20:.1f} MiB | "
            f"{sizes[name] / fp32:.3f} | {_summary(plan) if plan else ''} |"
        )
    lines += ["", f"Build (plans, compiles, ORT models): {report['build_s']:.0f} s."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.md").write_text("\n".join(lines) + "\n")
    plot(report, out / "frontier.png")
    # Each objective's section of its own: a size run leaves the latency one as it is.
    objective = report["objective"]
    section = "frontier" if objective == "latency" else f"frontier-{objective}"
    title = f"Planned budgets vs ONNX Runtime, objective {objective}"
    machine.publish(__file__, section, title, report, out, lines)


def _summary(plan: dict[str, Any]) -> str:
    """The plan's choices counted, like `9 x int8, 2 x int4-0.25`."""
    chosen = plan.get("chosen") or {}
    counts: dict[str, int] = {}
    for choice in chosen.get("choices", {}).values():
        counts[choice] = counts.get(choice, 0) + 1
    return ", ".join(f"{n} x {c}" for c, n in sorted(counts.items()))


def plot(report: dict[str, Any], path: Path) -> None:
    """Measured latency ratio and bytes against cosine, and each plan's predicted frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured, sizes = report["measured"], report["bytes"]
    fig, (speed, size, predicted) = plt.subplots(1, 3, figsize=(16, 5))
    for name, ratio in measured["ratio"].items():
        cosine = measured["cosine"][name]["mean"]
        fp32 = sizes["ORT fp32"] if name.startswith("ORT") else sizes[FP32]
        marker = "o" if name.startswith("budget") else ("s" if name.startswith("ORT") else "^")
        for axis, y in ((speed, ratio), (size, sizes[name] / fp32)):
            axis.scatter(cosine, y, marker=marker)
            axis.annotate(name, (cosine, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    speed.set(xlabel="mean cosine (evaluation text)", ylabel=f"latency / {BASELINE}")
    size.set(xlabel="mean cosine (evaluation text)", ylabel="bytes / fp32")
    for name, plan in report["plans"].items():
        points = plan["frontier"]
        cosine = [p["predicted_cosine"] for p in points]
        ms = [p["predicted_ms"] / plan["float_ms"] for p in points]
        predicted.step(cosine, ms, where="post", label=f"{name}: kernels / float")
        if plan.get("chosen"):
            chosen = plan["chosen"]
            predicted.scatter(chosen["predicted_cosine"], chosen["predicted_ms"] / plan["float_ms"])
    predicted.set(xlabel="predicted cosine (calibration text)", ylabel="predicted kernel time")
    predicted.legend(fontsize=8)
    for axis in (speed, size, predicted):
        axis.grid(alpha=0.3)
        axis.ticklabel_format(axis="x", useOffset=False)
        axis.tick_params(axis="x", labelrotation=30)
    fig.suptitle(f"{report['model']} {report['shape']}: {machine.describe_cpu(report['cpu'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
