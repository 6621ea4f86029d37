"""Files ONNX Runtime quantized (dynamic MatMulInteger, static QDQ, static QOperator) compile to
nlpress's integer kernels, no larger than the file, and follow the file in ONNX Runtime."""

import onnxruntime as ort
import pytest
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

import nlpress
from nlpress.models import zoo
from nlpress.models.text import encode, load_tokenizer
from nlpress.passes.calibration import pooled_cosine

SENTENCES = [
    "nlpress compiles NLP models.",
    "The driver panics when the module unloads.",
    "def parse(x): return int(x)",
    "are you coming tonight?",
]


def _feeds(names):
    tokenizer = load_tokenizer(str(zoo.get("bert-tiny-random").tokenizer()))
    return [{k: v for k, v in encode(tokenizer, [s], 32).items() if k in names} for s in SENTENCES]


class _Sentences(CalibrationDataReader):
    def __init__(self, names):
        self.batches = iter(_feeds(names))

    def get_next(self):
        return next(self.batches, None)


def _quantize(kind, source, target):
    if kind == "dynamic":
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
        return
    names = {i.name for i in ort.InferenceSession(source).get_inputs()}
    fmt = QuantFormat.QDQ if kind == "qdq" else QuantFormat.QOperator
    quantize_static(
        source, target, _Sentences(names), quant_format=fmt, per_channel=True,
        op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )  # fmt: skip


KINDS = ["dynamic", "qdq", "qoperator"]


def _compiled(kind, source, folder):
    quantized = folder / f"{kind}.onnx"
    _quantize(kind, str(source), str(quantized))
    return quantized, nlpress.compile(str(quantized), "x86", folder / "x86")


def _as_written(path):
    """The file in ONNX Runtime as written: its optimizations fuse and round otherwise."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options)


def _cosine(artifact, quantized):
    session, reference = nlpress.load(artifact), _as_written(quantized)
    feeds = _feeds({i.name for i in reference.get_inputs()})
    ours = [session.run(["last_hidden_state"], f)[0] for f in feeds]
    theirs = [reference.run(["last_hidden_state"], f)[0] for f in feeds]
    return pooled_cosine(theirs, ours, feeds)


@pytest.mark.parametrize("kind", KINDS)
def test_an_ort_quantized_file_compiles_to_integer_kernels(tiny_bert_path, tmp_path, kind):
    quantized, artifact = _compiled(kind, tiny_bert_path, tmp_path)
    assert _cosine(artifact, quantized) >= 0.999
    feeds = _feeds({i.name for i in nlpress.load(artifact).get_inputs()})
    kernels = [k["name"] for k in nlpress.load(artifact).kernel_times(feeds[0])["kernels"]]
    assert sum("qmatmul" in name for name in kernels) >= 3, kernels


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_quantized_minilm_keeps_its_bytes(minilm_path, tmp_path, kind):
    """The library holds the file's integer weights as they are: at most 1.1x its bytes."""
    quantized, artifact = _compiled(kind, minilm_path, tmp_path)
    assert (artifact / "model.so").stat().st_size <= 1.1 * quantized.stat().st_size
    assert _cosine(artifact, quantized) >= 0.99
