"""Which output of a model is its embedding: the first floating-point output.

Exporters put copies of the inputs, masks or other integer tensors before the embedding, so
"the first output" is not always what a sentence embedding is made of. Budgets, sensitivity,
distillation, `eval`, held-out fidelity, `encode` and the pool pass all read the output chosen
here: the first whose element type is float32, float16, bfloat16 or double; the first output
when none is. The rule reads element types in every form a model's outputs come in: numpy
dtypes (graph tensors), ONNX type numbers, numpy names ("float32", an artifact manifest's) and
ONNX Runtime's type strings ("tensor(float)"). This module needs only the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

FLOAT_NAMES = frozenset({"float", "float32", "float16", "bfloat16", "double", "float64"})
ONNX_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16

Output = TypeVar("Output")


def is_floating(dtype: object) -> bool:
    """Whether an element type (numpy dtype, ONNX type number or type name) is floating point."""
    if dtype is None or isinstance(dtype, bool):
        return False
    if isinstance(dtype, int):
        return dtype in ONNX_FLOAT_TYPES
    name = str(getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or dtype)
    if name.startswith("tensor(") and name.endswith(")"):
        name = name[len("tensor(") : -1]
    return name in FLOAT_NAMES


def embedding_index(dtypes: Iterable[object]) -> int:
    """The position of the first floating-point element type in `dtypes`; 0 when there is none."""
    return next((i for i, dtype in enumerate(dtypes) if is_floating(dtype)), 0)


def embedding_output(outputs: Sequence[Output]) -> Output:
    """The embedding among a model's `outputs`: the first floating-point one, else the first.

    `outputs` are graph tensors (`.dtype`), ONNX Runtime or artifact outputs (`.type`, e.g.
    "tensor(float)") or manifest entries ({"dtype": "float32"}); there must be at least one.
    """
    return outputs[embedding_index(element_type(o) for o in outputs)]


def element_type(output: Any) -> object:
    """An output's element type, as its kind of description holds it."""
    if isinstance(output, Mapping):
        return output.get("dtype")
    dtype = getattr(output, "dtype", None)
    return dtype if dtype is not None else getattr(output, "type", None)
