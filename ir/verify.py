"""Verification: the ONNX checker, shape inference, and numeric comparison in ONNX Runtime."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from nlpress.ir.errors import VerificationError
from nlpress.ir.model import Feeds, Model

# Symbolic dims get these sizes in generated feeds unless the caller names them.
DEFAULT_DIM = 4


def check(model: Model | onnx.ModelProto) -> onnx.ModelProto:
    """Run the ONNX checker with strict shape inference; return the checked proto."""
    proto = model.to_onnx() if isinstance(model, Model) else model
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise VerificationError(f"checker: {str(exc).strip().splitlines()[0]}") from exc
    return proto


def infer_shapes(model: Model) -> Model:
    """A copy of `model` with ONNX shape inference's value_info (symbolic dims kept)."""
    proto = onnx.shape_inference.infer_shapes(model.to_onnx(), data_prop=True)
    return Model.from_onnx(proto)


def session(model: Model | onnx.ModelProto, optimize: bool = False) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; graph optimizations off unless asked, to test the graph.

    ONNX Runtime's own log stays quiet: its errors reach the caller as exceptions.

    Raises:
        VerificationError: ONNX Runtime cannot load the model, in one line.

    """
    proto = model.to_onnx() if isinstance(model, Model) else model
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise VerificationError(f"ONNX Runtime cannot load the model: {first_line(exc)}") from exc


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message as one line: ONNX Runtime's status text without its C++ frame."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^/\S+:\d+ [^(]*\([^)]*\)(?: const)? ", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run(model: Model | onnx.ModelProto, feeds: Feeds) -> dict[str, np.ndarray]:
    """Run `model` in ONNX Runtime; outputs by name."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    values = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, values, strict=True))


def make_feeds(
    model: Model | onnx.ModelProto,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    int_high: int = 2,
) -> dict[str, np.ndarray]:
    """Seeded random feeds for every graph input.

    Symbolic dims take their size from `dims` (by dim name) or DEFAULT_DIM. Float inputs are
    standard normal; integer inputs are drawn from [0, int_high) so that they are valid indices
    and masks for any embedding table; booleans are random.
    """
    proto = model.to_onnx() if isinstance(model, Model) else model
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    initializers = {init.name for init in proto.graph.initializer}
    feeds = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        shape = [_dim_size(d, dims) for d in tensor_type.shape.dim]
        feeds[value.name] = _random(rng, dtype, shape, int_high)
    return feeds


@dataclass(frozen=True)
class Comparison:
    """The largest absolute difference per output between a candidate and a reference."""

    max_abs_diff: Mapping[str, float]

    @property
    def worst(self) -> float:
        """The largest difference over all outputs."""
        return max(self.max_abs_diff.values(), default=0.0)


def compare(
    reference: Model,
    candidate: Model,
    feeds: Feeds | Sequence[Feeds],
    added_outputs: bool = False,
) -> Comparison:
    """Run both models on the same feeds; fail if their output names or shapes differ.

    With `added_outputs`, the candidate may have outputs the reference lacks; the reference's
    own are compared.
    """
    feed_list = [feeds] if isinstance(feeds, Mapping) else list(feeds)
    worst: dict[str, float] = {}
    for one in feed_list:
        expected, actual = run(reference, one), run(candidate, one)
        if added_outputs:
            actual = {name: value for name, value in actual.items() if name in expected}
        if expected.keys() != actual.keys():
            raise VerificationError(
                f"outputs differ: reference {sorted(expected)} vs candidate {sorted(actual)}"
            )
        for name, want in expected.items():
            got = actual[name]
            if want.shape != got.shape:
                raise VerificationError(f"output {name}: shape {got.shape}, expected {want.shape}")
            diff = _max_abs_diff(want, got)
            worst[name] = max(worst.get(name, 0.0), diff)
    return Comparison(worst)


def _max_abs_diff(want: np.ndarray, got: np.ndarray) -> float:
    if want.size == 0:
        return 0.0
    if want.dtype.kind in "biu":
        return float(np.max(np.abs(want.astype(np.int64) - got.astype(np.int64))))
    if want.dtype.kind in "OSU":
        return 0.0 if np.array_equal(want, got) else float("inf")
    same_nan = np.isnan(want) & np.isnan(got) if want.dtype.kind in "fc" else False
    diff = np.abs(want.astype(np.float64) - got.astype(np.float64))
    diff = np.where(same_nan | (want == got), 0.0, diff)
    return float(np.max(diff))


def _dim_size(dim: onnx.TensorShapeProto.Dimension, dims: Mapping[str, int]) -> int:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return int(dims.get(dim.dim_param, DEFAULT_DIM))


def _random(rng: np.random.Generator, dtype: np.dtype, shape: list[int], high: int) -> np.ndarray:
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, high, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(dtype)
