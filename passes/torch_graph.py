"""An ONNX graph run op by op in PyTorch, so that gradients flow to chosen initializers.

Distillation (`distill.py`) needs the gradient of the student's outputs with respect to the
weights that compression rewrote. `TorchGraph` evaluates a model's nodes in order with PyTorch
ops that follow the ONNX definitions; the named initializers become trainable parameters and
the rest stay constants. Static graphs (fixed batch in their Reshape constants) are batched with
`torch.func.vmap`: each calibration batch is one example, so the graph's own shapes hold.

Only the ops that inference graphs of transformer encoders use are implemented (`torch_ops`);
any other op is refused up front with a PreconditionError that names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from nlpress.ir import Model
from nlpress.passes import torch_ops
from nlpress.passes.base import PreconditionError
from nlpress.passes.torch_ops import Tensor, tensor

__all__ = ["Tensor", "TorchGraph", "require_torch"]

# PyTorch, imported by `require_torch` when distillation first needs it (importing it takes
# longer than the rest of nlpress), which also binds it for the ops in `torch_ops`.
torch: Any = None


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
    torch_ops.torch = torch
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
        unsupported = sorted({n.op_type for n in graph.node if n.op_type not in torch_ops.ops()})
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
                self.parameters[init.name] = tensor(value).requires_grad_(True)
            else:
                self.constants[init.name] = tensor(value)

    def __call__(self, feeds: Mapping[str, Tensor]) -> list[Tensor]:
        """The output tensors for one example's feeds (torch tensors)."""
        values: dict[str, Tensor | None] = {"": None, **self.constants, **self.parameters}
        values.update(feeds)
        for op_type, inputs, outputs, attrs in self.nodes:
            results = torch_ops.ops()[op_type]([values[name] for name in inputs], attrs)
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
    """Raise PreconditionError for a tensor type the ops in `torch_ops` do not compute."""
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
    unsupported = sorted({_type_name(t) for t in types if t not in torch_ops.types()})
    if unsupported:
        raise PreconditionError(f"distillation cannot compute {', '.join(unsupported)} tensors")


def _type_name(elem_type: int) -> str:
    return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs["_outputs"] = len(node.output)
    return attrs
