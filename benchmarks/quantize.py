"""quantize-insert on all-MiniLM-L6-v2: fidelity, size and latency of int8 beside ORT's quantizer.

Every configuration runs `fold,quantize-insert{...},cleanup` on minilm-l6 (dynamic batch and
sequence), calibrated on the project's calibration text, and is compared with the fp32 model
folded the same way on the evaluation text (`nlpress.models.metrics.fidelity`): mean and minimum
sentence cosine, recall@1, and the model's size in bytes. ONNX Runtime runs each QDQ model as
written (graph optimizations off: the quantization the graph states, what a lowering must
reproduce) and, for the `ort_opt_*` columns, with its own QDQ fusions. Beside them:
`onnxruntime.quantization.quantize_dynamic(per_channel=True, op_types_to_quantize=["MatMul"])`
on the same fp32 model.

With `--latency NAME ...`, those configurations (and the fp32 model, for the size) are compiled
for x86 with static shapes 1x128 and 8x128 (`nlpress.compile`, which calibrates at that shape),
and each artifact is measured: its fidelity on the evaluation text (padded to 128, as it takes
them), its latency beside ORT's dynamic int8 model and ORT fp32 (`compare_with_ort`: 2 threads,
alternating runs with a settle pause, on tokenized evaluation sentences), and its model.so size
beside the fp32 artifact's. With `--families`, the `-p int8` model is lowered for x86 once per
int8 kernel family this CPU can run (its own, and those of older CPUs named by `FAMILY_CPUS`)
and for aarch64 once per `ARM_FAMILIES` (run on an emulated board over RPC), with symbolic
shapes, and each artifact's fidelity on the evaluation text is measured: the same QDQ model, so
any difference is the kernels'. Writes quantize.json and quantize.md into
--results; models and artifacts go to --out.

    python benchmarks/quantize.py [--only NAME ...] [--latency NAME ...] [--runs N] [--families]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import machine
import numpy as np
import onnx

from nlpress.compiler import optimize
from nlpress.ir import Model
from nlpress.ir.verify import session
from nlpress.models import zoo
from nlpress.models.metrics import fidelity
from nlpress.models.text import encode, evaluation_pairs, load_tokenizer
from nlpress.passes.registry import NAMED_PIPELINES

log = logging.getLogger("benchmarks.quantize")

CONFIGS: Mapping[str, str] = {
    "int8": NAMED_PIPELINES["int8"],
    "int8-no-embeddings": (
        "fold,quantize-insert{smooth=0.8 budget-cosine=0.997 embeddings=false},cleanup"
    ),
    "static-mse-budget0.997": "fold,quantize-insert{budget-cosine=0.997},cleanup",
    "static-minmax": "fold,quantize-insert{calibration=minmax},cleanup",
    "static-percentile": "fold,quantize-insert{calibration=percentile},cleanup",
    "static-entropy": "fold,quantize-insert{calibration=entropy},cleanup",
    "static-mse": "fold,quantize-insert{calibration=mse},cleanup",
    "static-minmax-smooth0.5": "fold,quantize-insert{calibration=minmax smooth=0.5},cleanup",
    "static-mse-smooth0.5": "fold,quantize-insert{smooth=0.5},cleanup",
    "static-mse-smooth0.8": "fold,quantize-insert{smooth=0.8},cleanup",
    "dynamic": "fold,quantize-insert{mode=dynamic},cleanup",
    "dynamic-budget0.997": "fold,quantize-insert{mode=dynamic budget-cosine=0.997},cleanup",
}
DEFAULT = ("int8", "static-mse", "static-mse-budget0.997", "dynamic", "dynamic-budget0.997")
ARTIFACT_SHAPES = ((1, 128), (8, 128))
ORT_DYNAMIC = "minilm-ort-dynamic.onnx"
# x86 CPUs whose int8 kernel families run on a newer host: None is the host itself.
FAMILY_CPUS = (None, "znver3", "x86-64-v2")
# aarch64 int8 kernel families by their features (plain NEON: smull/sadalp).
ARM_FAMILIES: tuple[tuple[str, ...], ...] = ((), ("dotprod",), ("i8mm",))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(DEFAULT), choices=list(CONFIGS))
    parser.add_argument("--no-ort", action="store_true", help="skip ORT's quantize_dynamic")
    parser.add_argument(
        "--latency", nargs="*", default=[], choices=list(CONFIGS), help="compile these for x86"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="measure artifacts already in --out as they are"
    )
    parser.add_argument(
        "--arm",
        action="store_true",
        help="only: compile -p int8 for arm (+dotprod) at 8x128, run it under emulation and "
        "compare it with the x86 artifact; added to the results already written",
    )
    parser.add_argument(
        "--families",
        action="store_true",
        help="only: lower -p int8 for x86 once per int8 kernel family this CPU runs and measure "
        "each artifact's fidelity; added to the results already written",
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/out")
    parser.add_argument("--results", default="benchmarks/results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out, results = Path(args.out), Path(args.results)
    tokenizer = load_tokenizer(str(zoo.get("minilm-l6").tokenizer()))
    if args.arm or args.families:
        report = json.loads((results / "quantize.json").read_text())
        if args.arm:
            report["arm"] = arm_check(tokenizer, out)
        if args.families:
            report["families"] = families(tokenizer, out)
        write(report, results)
        return
    reference = optimize("minilm-l6", "fold,cleanup").model
    ref_session = session(reference, optimize=True)
    report: dict[str, Any] = {"load_average_start": os.getloadavg(), "cpus": os.cpu_count()}
    rows = [describe("fp32", "fold,cleanup", reference, ref_session, ref_session, tokenizer)]
    report["models"] = rows
    if not args.no_ort or args.latency:
        rows.append(ort_dynamic(reference, ref_session, tokenizer, out))
        write(report, results)
    for name in args.only:
        began = time.perf_counter()
        result = optimize("minilm-l6", CONFIGS[name])
        seconds = time.perf_counter() - began
        row = describe(name, CONFIGS[name], result.model, None, ref_session, tokenizer)
        stats = result.records[1].stats
        row["pass_seconds"] = seconds
        row.update({k: v for k, v in stats.items() if not k.startswith(_PER_LAYER)})
        row["float_layers"] = _float_layers(stats)
        rows.append(row)
        log.info("%s: cosine %.5f recall@1 %.4f", name, row["mean_cosine"], row["recall_at_1"])
        write(report, results)
    if args.latency:
        report["artifacts"] = []
        artifacts(report, args.latency, ref_session, tokenizer, out, args.runs, results, args.reuse)
    report["load_average_end"] = os.getloadavg()
    write(report, results)


_PER_LAYER = ("layer.", "activation.", "table.")


def _float_layers(stats: Mapping[str, float]) -> list[str]:
    return sorted(
        k.split(".", 1)[1].rsplit(".", 1)[0] for k in stats if k.endswith(".float_budget")
    )


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


def artifacts(
    report: dict[str, Any],
    names: Sequence[str],
    ref_session: Any,
    tokenizer: Any,
    out: Path,
    runs: int,
    results: Path,
    reuse: bool = False,
) -> None:
    """Compile the fp32 model and each configuration for x86 at each shape, and measure them."""
    import nlpress
    from nlpress.targets.bench import compare_with_ort

    rows: list[dict[str, Any]] = report["artifacts"]
    fp32_bytes: dict[tuple[int, int], int] = {}
    ort_int8, ort_fp32 = out / ORT_DYNAMIC, out / "minilm-fp32.onnx"
    onnx.save(optimize("minilm-l6", "fold,cleanup").model.to_onnx(), os.fspath(ort_fp32))
    for name in ("fp32", *names):
        pipeline = CONFIGS.get(name, "fold,cleanup")
        for batch, length in ARTIFACT_SHAPES if name != "fp32" else ARTIFACT_SHAPES[:1]:
            shape = f"{batch}x{length}"
            path = out / f"x86-quantize-{name}-{shape}"
            shapes = {n: (batch, length) for n in ("input_ids", "attention_mask", "token_type_ids")}
            began = time.perf_counter()
            reused = reuse and (path / "model.so").exists()
            try:
                if not reused:
                    nlpress.compile("minilm-l6", "x86", path, pipeline=pipeline, shapes=shapes)
            except Exception as exc:  # report what does not lower and go on
                log.warning("%s %s: compile failed: %s: %s", name, shape, type(exc).__name__, exc)
                rows.append({"name": name, "shape": shape, "error": f"{type(exc).__name__}: {exc}"})
                continue
            row: dict[str, Any] = {
                "name": name,
                "pipeline": pipeline,
                "shape": shape,
                "compile_seconds": None if reused else time.perf_counter() - began,
                "model_so_bytes": (path / "model.so").stat().st_size,
            }
            if name == "fp32":
                fp32_bytes[(batch, length)] = row["model_so_bytes"]
            else:
                row["so_vs_fp32"] = row["model_so_bytes"] / fp32_bytes[ARTIFACT_SHAPES[0]]
                quality = fidelity(nlpress.load(path), ref_session, tokenizer)
                row.update({f"artifact_{k}": v for k, v in quality.as_dict().items()})
                feeds = eval_feeds(tokenizer, batch, length)
                vs_int8 = compare_with_ort(path, ort_int8, feeds=feeds, runs=runs)
                vs_fp32 = compare_with_ort(path, ort_fp32, feeds=feeds, runs=runs)
                row.update(
                    {
                        "artifact_ms": vs_int8["nlpress_ms"],
                        "ort_int8_ms": vs_int8["ort_ms"],
                        "ratio_vs_ort_int8": vs_int8["ratio"],
                        "artifact_ms_2": vs_fp32["nlpress_ms"],
                        "ort_fp32_ms": vs_fp32["ort_ms"],
                        "ratio_vs_ort_fp32": vs_fp32["ratio"],
                        "threads": vs_int8["threads"],
                        "load_average": vs_int8["load_average"],
                    }
                )
            rows.append(row)
            log.info("%s", json.dumps(row, default=_plain))
            write(report, results)


def families(tokenizer: Any, out: Path) -> list[dict[str, Any]]:
    """The `-p int8` model lowered for each kernel family, and each artifact's fidelity.

    x86: once per CPU of `FAMILY_CPUS`, run here. ARM: once per `ARM_FAMILIES`, run on an
    emulated aarch64 board over RPC; each row also gives the largest difference of a sentence's
    cosine from the host x86 artifact's (0 where the kernels agree).
    """
    import nlpress
    from nlpress.ir import save_model
    from nlpress.targets.remote import RemoteSession
    from nlpress.targets.serving import LocalBoards

    model = out / "minilm-int8.onnx"
    if not model.exists():
        out.mkdir(parents=True, exist_ok=True)
        save_model(optimize("minilm-l6", CONFIGS["int8"]).model, model)
    reference = session(optimize("minilm-l6", "fold,cleanup").model, optimize=True)
    rows = []

    def measured(path: Path, runtime: Any, compiled: float) -> dict[str, Any]:
        code = json.loads((path / "manifest.json").read_text())["code"]
        quality = fidelity(runtime, reference, tokenizer)
        row = {"mcpu": code["cpu"] or code["arch"], "compile_seconds": compiled}
        row.update(**code["kernels"], **quality.scores(), per_sentence=quality.per_sentence)
        host = rows[0]["per_sentence"] if rows else quality.per_sentence
        row["max_cosine_diff_vs_host"] = float(
            np.max(np.abs(np.subtract(host, row["per_sentence"])))
        )
        log.info("%s: %s, cosine %.5f", row["mcpu"], code["kernels"], row["mean_cosine"])
        return row

    for cpu in FAMILY_CPUS:
        path = out / f"x86-int8-family-{cpu or 'host'}"
        began = time.perf_counter()
        nlpress.compile(model, "x86", path, pipeline="fold", mcpu=cpu)
        rows.append(measured(path, nlpress.load(path), time.perf_counter() - began))
    with tempfile.TemporaryDirectory(prefix="boards-") as logs, LocalBoards(logs) as boards:
        boards.add("arm", emulate=True)
        for mattr in ARM_FAMILIES:
            path = out / f"arm-int8-family-{'-'.join(mattr) or 'neon'}"
            began = time.perf_counter()
            nlpress.compile(model, "arm", path, pipeline="fold", mattr=mattr)
            compiled = time.perf_counter() - began
            with RemoteSession(path, boards.board("arm")) as remote:
                row = measured(path, remote, compiled)
            row["mcpu"] = "aarch64 " + " ".join(f"+{a}" for a in ("neon", *mattr))
            row["ran_on"] = "an emulated aarch64 board (qemu-user) over RPC"
            rows.append(row)
    for row in rows:
        row.pop("per_sentence")
    return rows


def arm_check(tokenizer: Any, out: Path, name: str = "int8") -> dict[str, Any]:
    """The arm (+dotprod) int8 artifact under emulation beside the x86 one, at 8x128."""
    import nlpress
    from nlpress.targets.arm import run_emulated

    batch, length = ARTIFACT_SHAPES[-1]
    shape = f"{batch}x{length}"
    x86 = out / f"x86-quantize-{name}-{shape}"
    arm = out / f"arm-quantize-{name}-{shape}"
    shapes = {n: (batch, length) for n in ("input_ids", "attention_mask", "token_type_ids")}
    began = time.perf_counter()
    nlpress.compile(
        "minilm-l6", "arm", arm, pipeline=CONFIGS[name], shapes=shapes, mattr=["dotprod"]
    )
    compiled = time.perf_counter() - began
    feeds = eval_feeds(tokenizer, batch, length)
    host = nlpress.load(x86)
    wanted = {i.name for i in host.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in wanted}
    began = time.perf_counter()
    emulated = run_emulated(arm, [feeds])[0][0]
    ran = time.perf_counter() - began
    native = np.asarray(host.run(None, feeds)[0])
    mask = feeds["attention_mask"][..., None].astype(np.float64)
    pooled = [(np.asarray(v, np.float64) * mask).sum(1) / mask.sum(1) for v in (emulated, native)]
    cosine = np.sum(pooled[0] * pooled[1], 1) / (
        np.linalg.norm(pooled[0], axis=1) * np.linalg.norm(pooled[1], axis=1)
    )
    diff = np.abs(emulated.astype(np.float64) - native)
    written = session(onnx.load(os.fspath(x86 / "model.onnx"))).run(None, feeds)[0]
    ort_diff = np.abs(native - np.asarray(written, np.float64))
    real = feeds["attention_mask"].astype(bool)
    return {
        "pipeline": CONFIGS[name],
        "shape": shape,
        "target": "arm (aarch64-linux-gnu, +neon +dotprod), qemu-user",
        "compile_seconds": compiled,
        "emulated_seconds": ran,
        "model_so_bytes": (arm / "model.so").stat().st_size,
        "max_abs_diff_vs_x86": float(diff.max()),
        "mean_abs_diff_vs_x86_real_tokens": float(diff[real].mean()),
        "max_abs_diff_vs_x86_real_tokens": float(diff[real].max()),
        "x86_vs_ort_max_abs_diff": float(ort_diff.max()),
        "x86_vs_ort_max_abs_diff_real_tokens": float(ort_diff[real].max()),
        "x86_vs_ort_mean_abs_diff_real_tokens": float(ort_diff[real].mean()),
        "max_abs_output": float(np.abs(native).max()),
        "min_sentence_cosine_vs_x86": float(cosine.min()),
    }


def eval_feeds(tokenizer: Any, batch: int, length: int) -> dict[str, np.ndarray]:
    """The first `batch` evaluation sentences, tokenized and padded to `length`."""
    texts = [a for a, _ in evaluation_pairs()[:batch]]
    return dict(encode(tokenizer, texts, length, "max_length"))


def write(report: Mapping[str, Any], results: Path) -> None:
    """quantize.json and quantize.md (two tables: pass-level models, x86 artifacts)."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "quantize.json").write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    lines = [
        "| model | mean cos | min cos | recall@1 (fp32) | ORT-optimized cos | bytes | "
        "float layers | pass s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | "
        f"{r['recall_at_1']:.4f} ({r['reference_recall_at_1']:.4f}) | "
        f"{r['ort_opt_mean_cosine']:.4f} | {r['model_bytes'] / 1e6:.1f} MB | "
        f"{len(r.get('float_layers', []))} | {_num(r.get('pass_seconds'), 0)} |"
        for r in report["models"]
    ]
    if report.get("artifacts"):
        lines += [
            "",
            "| x86 artifact | shape | mean cos | min cos | recall@1 (fp32) | ms | ORT int8 ms | "
            "ratio vs ORT int8 | ORT fp32 ms | ratio vs ORT fp32 | model.so | vs fp32 .so |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [_artifact_line(r) for r in report["artifacts"]]
    lines += [
        "",
        f"load average (1, 5, 15 min) at the start: {_load(report, 'start')}; "
        f"at the end: {_load(report, 'end')}; {report.get('cpus')} CPUs.",
    ]
    if report.get("families"):
        lines += [
            "",
            "With `--families` (added to the tables above, which an earlier run wrote): "
            "`-p int8` lowered once per int8 kernel family, symbolic shapes; x86 run here, "
            "aarch64 on an emulated board (qemu-user) over RPC. The last column is the largest "
            "difference of a sentence's cosine from the first row's.",
            "",
            "| compiled for | int8 kernels | instruction | mean cos | min cos | recall@1 (fp32) "
            "| max cos diff vs first |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['mcpu']} | {r['int8']} | {r.get('int8_instruction') or '-'} | "
            f"{r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | {r['recall_at_1']:.4f} "
            f"({r['reference_recall_at_1']:.4f}) | {_num(r.get('max_cosine_diff_vs_host'), 7)} |"
            for r in report["families"]
        ]
    arm = report.get("arm")
    if arm:
        lines += [
            "",
            f"ARM: `{arm['pipeline']}` at {arm['shape']} for {arm['target']}: max |arm - x86| "
            f"{arm['max_abs_diff_vs_x86']:.2e} (real tokens: max "
            f"{arm['max_abs_diff_vs_x86_real_tokens']:.2e}, mean "
            f"{arm['mean_abs_diff_vs_x86_real_tokens']:.2e}; outputs "
            f"up to {arm['max_abs_output']:.2f}), least sentence cosine to x86 "
            f"{arm['min_sentence_cosine_vs_x86']:.6f}; model.so {arm['model_so_bytes'] / 1e6:.1f} "
            f"MB; the emulated run took {arm['emulated_seconds']:.0f} s. For scale, the x86 "
            f"artifact against ONNX Runtime running the same QDQ graph as written: max "
            f"{arm['x86_vs_ort_max_abs_diff']:.2e} (real tokens: max "
            f"{arm['x86_vs_ort_max_abs_diff_real_tokens']:.2e}, mean "
            f"{arm['x86_vs_ort_mean_abs_diff_real_tokens']:.2e}).",
        ]
    lines += ["", *(f"- {note}" for note in report.get("notes", []))]
    (results / "quantize.md").write_text("\n".join(lines).rstrip() + "\n")
    machine.write_section(
        "quantize",
        "quantize-insert on all-MiniLM-L6-v2 (benchmarks/quantize.py)",
        "\n".join(lines).rstrip().splitlines(),
        machine.command(__file__, sys.argv[1:]),
    )


def _artifact_line(r: Mapping[str, Any]) -> str:
    if "error" in r:
        return f"| {r['name']} | {r['shape']} | {r['error']} |"
    recall = r.get("artifact_recall_at_1")
    return (
        f"| {r['name']} | {r['shape']} | {_num(r.get('artifact_mean_cosine'), 4)} | "
        f"{_num(r.get('artifact_min_cosine'), 4)} | {_num(recall, 4)} "
        f"({_num(r.get('artifact_reference_recall_at_1'), 4)}) | {_num(r.get('artifact_ms'), 1)} | "
        f"{_num(r.get('ort_int8_ms'), 1)} | {_num(r.get('ratio_vs_ort_int8'), 3)} | "
        f"{_num(r.get('ort_fp32_ms'), 1)} | {_num(r.get('ratio_vs_ort_fp32'), 3)} | "
        f"{r['model_so_bytes'] / 1e6:.1f} MB | {_num(r.get('so_vs_fp32'), 3)} |"
    )


def _load(report: Mapping[str, Any], when: str) -> str:
    value = report.get(f"load_average_{when}")
    return "-" if value is None else ", ".join(f"{x:.2f}" for x in value)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    main()
