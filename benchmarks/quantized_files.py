"""Quantized files a user brings, compiled by nlpress: bytes, and agreement with the file in ORT.

minilm-l6 quantized four ways, as users quantize it: ONNX Runtime's dynamic int8 (MatMulInteger),
static QDQ and static QOperator (QLinearMatMul; per-channel int8 weights, uint8 activations
calibrated on the zoo's calibration text), and a weight-only int8 file (per-column int8
initializers behind DequantizeLinear). Each is compiled with `nlpress compile FILE -t x86` and
run on evaluation sentences at their own lengths (batch 1). Columns:

- bytes: the file's, and the library's over the file's;
- ours vs ORT: mean cosine of mean-pooled embeddings to the file in ONNX Runtime as written (no
  graph optimizations) and with its default optimizations;
- ORT vs ORT: the same file in ONNX Runtime, as written against its defaults; and as written
  against a copy whose float tables and weights are multiplied by (1 + 1e-7 N(0, 1)), about one
  float32 rounding: what the file's outputs move under rounding noise alone (its noise floor);
- file vs fp32: the file as written against the float model, what quantizing it cost.

Writes quantized_files.json into --out and the "quantized-files" section of RESULTS.md.

    python benchmarks/quantized_files.py [--sentences N] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import machine
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

import nlpress
from nlpress.models import zoo
from nlpress.models.text import calibration_sentences, encode, evaluation_pairs, load_tokenizer
from nlpress.passes.calibration import pooled_cosine

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from graphs import weight_only_int8  # the tests' weight-only writer

log = logging.getLogger("benchmarks.quantized_files")
MODEL = "minilm-l6"
OUTPUT = "last_hidden_state"
KINDS = ("dynamic", "qdq", "qoperator", "weight-only")
NOISE = 1e-7  # relative: about one float32 rounding (6e-8)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sentences", type=int, default=64, help="calibration and evaluation")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/quantized_files"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    warnings.simplefilter("ignore")
    source = zoo.model_path(MODEL)
    tokenizer = load_tokenizer(str(zoo.get(MODEL).tokenizer()))
    names = [i.name for i in ort.InferenceSession(str(source)).get_inputs()]

    def feeds(sentences: Sequence[str]) -> list[dict[str, np.ndarray]]:
        return [{k: v for k, v in encode(tokenizer, [s]).items() if k in names} for s in sentences]

    calibration = feeds(calibration_sentences()[: args.sentences])
    evaluation = feeds([a for a, _ in evaluation_pairs()[: args.sentences]])
    fp32 = _outputs(_session(source, optimized=True), evaluation)
    with tempfile.TemporaryDirectory() as work:
        rows = [measure(kind, source, Path(work), calibration, evaluation, fp32) for kind in KINDS]
    write({"rows": rows, "sentences": args.sentences}, args)


def measure(
    kind: str,
    source: Path,
    work: Path,
    calibration: list[dict[str, np.ndarray]],
    evaluation: list[dict[str, np.ndarray]],
    fp32: list[np.ndarray],
) -> dict[str, Any]:
    """One file's row: bytes, and the cosines of the module docstring."""
    log.info("%s", kind)
    path = work / f"{kind}.onnx"
    QUANTIZERS[kind](source, path, calibration)
    artifact = nlpress.compile(str(path), "x86", work / f"{kind}-x86")
    written = _outputs(_session(path, optimized=False), evaluation)
    default = _outputs(_session(path, optimized=True), evaluation)
    ours = [nlpress.load(artifact).run([OUTPUT], f)[0] for f in evaluation]
    noisy = _outputs(_session(_perturbed(path, work), optimized=False), evaluation)

    def cosine(a: list[np.ndarray], b: list[np.ndarray]) -> float:
        return round(pooled_cosine(a, b, evaluation), 5)

    file_bytes = path.stat().st_size
    return {
        "kind": kind,
        "file_mb": round(file_bytes / 1e6, 2),
        "library_ratio": round((artifact / "model.so").stat().st_size / file_bytes, 3),
        "ours_vs_written": cosine(written, ours),
        "ours_vs_default": cosine(default, ours),
        "written_vs_default": cosine(written, default),
        "noise_floor": cosine(written, noisy),
        "file_vs_fp32": cosine(fp32, written),
    }


class _Batches(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.batches = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _static(fmt: Any) -> Callable[[Path, Path, list[dict[str, np.ndarray]]], None]:
    def quantize(source: Path, target: Path, calibration: list[dict[str, np.ndarray]]) -> None:
        quantize_static(
            str(source), str(target), _Batches(calibration), quant_format=fmt, per_channel=True,
            op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )  # fmt: skip

    return quantize


def _dynamic(source: Path, target: Path, _calibration: Any) -> None:
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


def _weight_only(source: Path, target: Path, _calibration: Any) -> None:
    onnx.save(weight_only_int8(onnx.load(str(source))), str(target))


QUANTIZERS = {
    "dynamic": _dynamic,
    "qdq": _static(QuantFormat.QDQ),
    "qoperator": _static(QuantFormat.QOperator),
    "weight-only": _weight_only,
}


def _session(path: Path, optimized: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options)


def _outputs(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> list[Any]:
    return [session.run([OUTPUT], f)[0] for f in feeds]


def _perturbed(path: Path, work: Path) -> Path:
    """A copy of the file whose float tables and weights (rank 2 or more) carry relative noise
    of NOISE, as if rounded once more: its scales, zero points and vectors stay as written."""
    model, rng = onnx.load(str(path)), np.random.default_rng(0)
    for tensor in model.graph.initializer:
        value = numpy_helper.to_array(tensor)
        if value.dtype == np.float32 and value.ndim >= 2:  # tables and float weights
            noisy = value * (1 + NOISE * rng.standard_normal(value.shape))
            tensor.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), tensor.name))
    target = work / f"{path.stem}-noisy.onnx"
    onnx.save(model, str(target))
    return target


COLUMNS = (
    ("kind", "file"),
    ("file_mb", "file MB"),
    ("library_ratio", "library / file bytes"),
    ("ours_vs_written", "ours vs ORT as written"),
    ("ours_vs_default", "ours vs ORT default"),
    ("written_vs_default", "ORT as written vs default"),
    ("noise_floor", "ORT vs ORT with 1e-7 noise"),
    ("file_vs_fp32", "file vs fp32"),
)


def write(report: dict[str, Any], args: argparse.Namespace) -> None:
    """quantized_files.json (everything) and the RESULTS.md section (the table)."""
    lines = [
        f"minilm-l6 quantized by ONNX Runtime's tools (calibrated on {report['sentences']} "
        "sentences of the zoo's calibration text) or weight-only, compiled with `nlpress "
        f"compile FILE -t x86`; mean cosines of mean-pooled embeddings on {report['sentences']} "
        "evaluation sentences at their own lengths. The noise column is the file against "
        "itself with its float tables and weights perturbed by about one float32 rounding: "
        "what its outputs move under rounding noise alone.",
        "",
        f"| {' | '.join(title for _, title in COLUMNS)} |",
        f"|{'---|' * len(COLUMNS)}",
    ]
    for row in report["rows"]:
        lines.append(f"| {' | '.join(str(row[key]) for key, _ in COLUMNS)} |")
    title = "Quantized files users bring"
    machine.publish(__file__, "quantized-files", title, report, args.out, lines)


if __name__ == "__main__":
    main()
