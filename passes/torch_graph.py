"""An ONNX graph run op by op in PyTorch, so that gradients flow to chosen initializers.

Distillation (`distill.py`) needs the gradient of the student's outputs with respect to the
weights that compression rewrote. `TorchGraph` evaluates a model's nodes in order with PyTorch
ops that follow the ONNX definitions; the named initializers become trainable parameters and
the rest stay constants. Static graphs (fixed batch in their Reshape constants) are batched with
`torch.func.vmap`: each calibration batch is one example, so the graph's own shapes hold.

Only the ops that inference graphs of transformer encoders use are implemented; any other op
is refused up front with a PreconditionError that names it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from nlpress.ir import Model
from nlpress.passes.base import PreconditionError

# PyTorch, imported by `require_torch` when distillation first needs it (importing it takes
# longer than the rest of nlpress); typed loosely: every op below works on torch.Tensor values.
torch: Any = None
Tensor = Any
Op = Callable[[Sequence[Any], Mapping[str, Any]], Sequence[Any]]


def require_torch(what: str) -> Any:
    """Import PyTorch; a PreconditionError says how to install it when it is missing."""
    global torch
    if torch is None:
        try:
            torch = importlib.import_module("torch")
        except ImportError:
            raise PreconditionError(
                f"{what} needs PyTorch: pip install 'nlpress[distill]'"
            ) from None
    return torch


class TorchGraph:
    """A model's graph as a differentiable function of its feeds and of the named initializers.

    Attributes:
        parameters: The trainable initializers by name, as leaf tensors of their own dtype.
        output_names: The tensors a call returns, in order: the graph outputs unless other
            tensors were asked for.
    """

    def __init__(
        self, model: Model, trainable: Collection[str], outputs: Sequence[str] | None = None
    ) -> None:
        require_torch("distillation")
        proto = model.to_onnx()
        graph = proto.graph
        unsupported = sorted({n.op_type for n in graph.node if n.op_type not in _ops()})
        if unsupported:
            raise PreconditionError(
                f"distillation cannot run these ops in PyTorch: {', '.join(unsupported)}"
            )
        _refuse_unsupported_types(graph)
        self.nodes = [
            (n.op_type, list(n.input), list(n.output), _attributes(n)) for n in graph.node
        ]
        self.output_names = list(outputs or [o.name for o in graph.output])
        self.input_names = [i.name for i in graph.input]
        self.constants: dict[str, Tensor] = {}
        self.parameters: dict[str, Tensor] = {}
        for init in graph.initializer:
            value = numpy_helper.to_array(init)
            if init.name in trainable:
                self.parameters[init.name] = _tensor(value).requires_grad_(True)
            else:
                self.constants[init.name] = _tensor(value)

    def __call__(self, feeds: Mapping[str, Tensor]) -> list[Tensor]:
        """The output tensors for one example's feeds (torch tensors)."""
        values: dict[str, Tensor | None] = {"": None, **self.constants, **self.parameters}
        values.update(feeds)
        for op_type, inputs, outputs, attrs in self.nodes:
            results = _ops()[op_type]([values[name] for name in inputs], attrs)
            values.update(zip(outputs, results, strict=False))
        return [values[name] for name in self.output_names]

    def batched(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[Tensor]:
        """The outputs for several examples at once, stacked on a new leading dim."""
        names = [n for n in self.input_names if n in feeds[0]]
        stacked = [torch.from_numpy(np.stack([f[n] for f in feeds])) for n in names]

        def one(*args: Tensor) -> list[Tensor]:
            return self(dict(zip(names, args, strict=True)))

        return list(torch.func.vmap(one)(*stacked))

    def weights(self) -> dict[str, np.ndarray]:
        """The current values of the trainable initializers as numpy arrays."""
        return {name: p.detach().numpy().copy() for name, p in self.parameters.items()}


def _refuse_unsupported_types(graph: onnx.GraphProto) -> None:
    """Raise PreconditionError for a tensor type the PyTorch ops here do not compute."""
    if any(not v.type.HasField("tensor_type") for v in graph.input):
        raise PreconditionError("distillation runs graphs whose inputs are all tensors")
    types = [v.type.tensor_type.elem_type for v in graph.input]
    types += [init.data_type for init in graph.initializer]
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to":
                types.append(attribute.i)
            elif attribute.type == onnx.AttributeProto.TENSOR:
                types.append(attribute.t.data_type)
    unsupported = sorted({_type_name(t) for t in types if t not in _types()})
    if unsupported:
        raise PreconditionError(f"distillation cannot compute {', '.join(unsupported)} tensors")


def _type_name(elem_type: int) -> str:
    return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs["_outputs"] = len(node.output)
    return attrs


def _tensor(value: np.ndarray) -> Tensor:
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
    return [inputs[0].to(_types()[attrs["to"]])]


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
    return [_tensor(numpy_helper.to_array(attrs["value"]))]


def _constant_of_shape(inputs: Sequence[Any], attrs: Mapping[str, Any]) -> list[Tensor]:
    fill = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    return [_tensor(np.full(_ints(inputs[0]), fill.reshape(-1)[0], dtype=fill.dtype))]


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
def _types() -> dict[int, Any]:
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
def _ops() -> dict[str, Op]:
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
