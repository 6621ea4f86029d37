"""The PyTorch op of each ONNX operator that `TorchGraph` runs, following the ONNX definitions.

Each op takes the node's inputs (torch tensors, None where an optional input is left out) and
its attributes, and returns its outputs. `ops` is the table by operator name, `types` the torch
dtype of each ONNX tensor type computed here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from nlpress.passes.base import PreconditionError

# PyTorch, bound by `torch_graph.require_torch` before any op here runs (importing it takes
# longer than the rest of nlpress); typed loosely: every op below works on torch.Tensor values.
torch: Any = None
Tensor = Any
Op = Callable[[Sequence[Any], Mapping[str, Any]], Sequence[Any]]


def tensor(value: np.ndarray) -> Tensor:
    """`value` as a torch tensor that owns a copy of its data."""
    return torch.from_numpy(np.array(value))


def _optional(inputs: Sequence[Any], index: int) -> Tensor | None:
    """The input at `index`, or None where it is left out (absent or named "")."""
    return inputs[index] if len(inputs) > index else None


def _ints(value: Tensor | None) -> list[int]:
    return [] if value is None else [int(v) for v in value.tolist()]


def _elementwise(fn: Callable[..., Tensor]) -> Op:
    return lambda inputs, attrs: [fn(*inputs)]


def _divide(a: Tensor, b: Tensor) -> Tensor:
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Op:
    def op(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
        result = inputs[0]
        for other in inputs[1:]:
            result = fn(result, other)
        return [result]

    return op


def _cast(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    return [inputs[0].to(types()[attrs["to"]])]


def _gemm(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    a, b = inputs[0], inputs[1]
    if attrs.get("transA", 0):
        a = a.transpose(-1, -2)
    if attrs.get("transB", 0):
        b = b.transpose(-1, -2)
    result = attrs.get("alpha", 1.0) * (a @ b)
    bias = _optional(inputs, 2)
    return [result if bias is None else result + attrs.get("beta", 1.0) * bias]


def _layer_norm(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    x, scale, bias = inputs[0], inputs[1], _optional(inputs, 2)
    axis = attrs.get("axis", -1) % x.dim()
    dims = list(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    inverse_deviation = 1 / torch.sqrt(variance + attrs.get("epsilon", 1e-5))
    y = (x - mean) * inverse_deviation * scale
    return [y if bias is None else y + bias, mean, inverse_deviation]


def _softmax(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    return [torch.softmax(inputs[0], dim=attrs.get("axis", -1))]


def _reshape(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    x, shape = inputs[0], _ints(inputs[1])
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _transpose(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    perm = attrs.get("perm") or list(reversed(range(inputs[0].dim())))
    return [inputs[0].permute(*perm)]


def _flatten(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    x = inputs[0]
    axis = attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return [x.reshape(outer, -1)]


def _axes(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[int]:
    given = _optional(inputs, 1)
    return _ints(given) if given is not None else list(attrs.get("axes", []))


def _unsqueeze(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    x, axes = inputs[0], _axes(inputs, attrs)
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return [x]


def _squeeze(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    x = inputs[0]
    axes = _axes(inputs, attrs) or [i for i, d in enumerate(x.shape) if d == 1]
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return [x]


def _concat(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    return [torch.cat(list(inputs), dim=attrs["axis"])]


def _gather(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    data, indices = inputs
    axis = attrs.get("axis", 0) % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices).long()
    picked = torch.index_select(data, axis, indices.reshape(-1))
    shape = list(data.shape[:axis]) + list(indices.shape) + list(data.shape[axis + 1 :])
    return [picked.reshape(shape)]


def _slice(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    x = inputs[0]
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(_optional(inputs, 3)) or range(len(starts))
    steps = _ints(_optional(inputs, 4)) or [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step < 0:
            raise PreconditionError("distillation does not run Slice with negative steps")
        size = x.shape[axis]
        start, end = (max(min(bound, size), -size) for bound in (start, end))
        index[axis % x.dim()] = slice(start, end, step)
    return [x[tuple(index)]]


def _shape(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    dims = list(inputs[0].shape)[attrs.get("start", 0) : attrs.get("end")]
    return [torch.tensor(dims, dtype=torch.int64)]


def _expand(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    x, shape = inputs[0], _ints(inputs[1])
    target = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    return [x.expand(target)]


def _constant(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    if "value" not in attrs:
        raise PreconditionError("distillation runs only tensor-valued Constant nodes")
    return [tensor(numpy_helper.to_array(attrs["value"]))]


def _constant_of_shape(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    fill = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    return [tensor(np.full(_ints(inputs[0]), fill.reshape(-1)[0], dtype=fill.dtype))]


def _range(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    start, limit, delta = (v.item() for v in inputs)
    return [torch.arange(start, limit, delta, dtype=inputs[0].dtype)]


def _reduce(fn: Callable[..., Tensor]) -> Op:
    def op(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
        x, axes = inputs[0], _axes(inputs, attrs)
        if not axes and attrs.get("noop_with_empty_axes", 0):
            return [x]
        if x.numel() == 0:
            raise PreconditionError("distillation does not reduce empty tensors")
        axes = axes or list(range(x.dim()))
        return [fn(x, dim=axes, keepdim=bool(attrs.get("keepdims", 1)))]

    return op


def _gelu(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    approximate = attrs.get("approximate", b"none")
    if isinstance(approximate, bytes):
        approximate = approximate.decode()
    return [torch.nn.functional.gelu(inputs[0], approximate=approximate)]


def _clip(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    low, high = _optional(inputs, 1), _optional(inputs, 2)
    if low is None and high is None:
        return [inputs[0]]
    return [torch.clamp(inputs[0], min=low, max=high)]


def _split(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    x, axis = inputs[0], attrs.get("axis", 0)
    sizes = _ints(_optional(inputs, 1)) or attrs.get("split")
    if not sizes:
        parts = attrs.get("num_outputs", attrs["_outputs"])
        size = -(-x.shape[axis] // parts)
        return list(torch.split(x, size, dim=axis))
    return list(torch.split(x, list(sizes), dim=axis))


def _is_inf(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    x = inputs[0]
    found = torch.zeros_like(x, dtype=torch.bool)
    if attrs.get("detect_positive", 1):
        found = found | torch.isposinf(x)
    if attrs.get("detect_negative", 1):
        found = found | torch.isneginf(x)
    return [found]


def _dropout(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    training = _optional(inputs, 2)
    if training is not None and bool(training):
        raise PreconditionError("distillation runs Dropout in inference mode only")
    return [inputs[0], torch.ones_like(inputs[0], dtype=torch.bool)]


def _where(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    condition, a, b = inputs
    return [torch.where(condition, a, b)]


@functools.cache
def types() -> dict[int, Any]:
    """The torch dtype of each ONNX tensor type computed here."""
    return {
        onnx.TensorProto.FLOAT: torch.float32,
        onnx.TensorProto.DOUBLE: torch.float64,
        onnx.TensorProto.FLOAT16: torch.float16,
        onnx.TensorProto.INT64: torch.int64,
        onnx.TensorProto.INT32: torch.int32,
        onnx.TensorProto.INT8: torch.int8,
        onnx.TensorProto.UINT8: torch.uint8,
        onnx.TensorProto.BOOL: torch.bool,
    }


@functools.cache
def ops() -> dict[str, Op]:
    """The op of each ONNX operator implemented here."""
    return {
        "Add": _elementwise(torch.add),
        "Sub": _elementwise(torch.sub),
        "Mul": _elementwise(torch.mul),
        "Div": _elementwise(_divide),
        "Pow": _elementwise(torch.pow),
        "Sqrt": _elementwise(torch.sqrt),
        "Exp": _elementwise(torch.exp),
        "Log": _elementwise(torch.log),
        "Neg": _elementwise(torch.neg),
        "Abs": _elementwise(torch.abs),
        "Reciprocal": _elementwise(torch.reciprocal),
        "Erf": _elementwise(torch.erf),
        "Tanh": _elementwise(torch.tanh),
        "Sigmoid": _elementwise(torch.sigmoid),
        "Relu": _elementwise(torch.relu),
        "Equal": _elementwise(torch.eq),
        "Greater": _elementwise(torch.gt),
        "GreaterOrEqual": _elementwise(torch.ge),
        "Less": _elementwise(torch.lt),
        "LessOrEqual": _elementwise(torch.le),
        "And": _elementwise(torch.logical_and),
        "Or": _elementwise(torch.logical_or),
        "Xor": _elementwise(torch.logical_xor),
        "Not": _elementwise(torch.logical_not),
        "IsNaN": _elementwise(torch.isnan),
        "IsInf": _is_inf,
        "Identity": _elementwise(lambda x: x),
        "Dropout": _dropout,
        "MatMul": _elementwise(torch.matmul),
        "Max": _variadic(torch.maximum),
        "Min": _variadic(torch.minimum),
        "Sum": _variadic(torch.add),
        "Where": _where,
        "Cast": _cast,
        "Gemm": _gemm,
        "LayerNormalization": _layer_norm,
        "Softmax": _softmax,
        "Gelu": _gelu,
        "Clip": _clip,
        "Reshape": _reshape,
        "Transpose": _transpose,
        "Flatten": _flatten,
        "Unsqueeze": _unsqueeze,
        "Squeeze": _squeeze,
        "Concat": _concat,
        "Gather": _gather,
        "Slice": _slice,
        "Shape": _shape,
        "Expand": _expand,
        "Split": _split,
        "Constant": _constant,
        "ConstantOfShape": _constant_of_shape,
        "Range": _range,
        "ReduceMean": _reduce(torch.mean),
        "ReduceSum": _reduce(torch.sum),
        "ReduceMax": _reduce(torch.amax),
    }
