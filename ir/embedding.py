"""Which output of a model is its embedding: the one the user named, else the one shaped like one.

Exporters put copies of the inputs, masks, pooled vectors or every layer's states beside the
embedding, so "the first output" is not always what a sentence embedding is made of. Budgets,
sensitivity, distillation, `eval`, held-out fidelity, `encode` and the pool pass all read the
output chosen here:

1. the output named by the model's metadata property `nlpress.embedding` (set by `--embedding`);
2. else the one floating-point output of rank 3, token embeddings [batch, sequence, hidden];
3. else the one of rank 2, a pooled [batch, hidden];
4. else the one floating-point output of any (unknown) rank.

Two candidates at the first rank that has any, or none at all, is an error that asks for a name:
never a silent pick. The rule reads element types in every form a model's outputs come in: numpy
dtypes (graph tensors), ONNX type numbers, numpy names ("float32", an artifact manifest's) and
ONNX Runtime's type strings ("tensor(float)"). This module needs only the standard library and
nlpress's errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from nlpress.ir.errors import UsageError

KEY = "nlpress.embedding"  # the model metadata property that names the embedding output
FLAG = "--embedding"
FLOAT_NAMES = frozenset({"float", "float32", "float16", "bfloat16", "double", "float64"})
ONNX_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
SHAPES = {3: "token embeddings [batch, sequence, hidden]", 2: "pooled [batch, hidden]"}

Output = TypeVar("Output")


class EmbeddingOutputError(UsageError):
    """No output, or more than one, can be the embedding, and none was named."""


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


def embedding_output(outputs: Sequence[Output], named: str | None = None) -> Output:
    """The embedding among a model's `outputs`: `named`, else the rule above.

    `outputs` are graph tensors (`.dtype`, `.shape`), ONNX Runtime or artifact outputs (`.type`,
    e.g. "tensor(float)") or manifest entries ({"dtype": "float32", "shape": [...]}).

    Raises:
        EmbeddingOutputError: `named` is not a floating-point output, or the rule finds no single
            candidate.

    """
    if named is not None:
        return _named(outputs, named)
    floats = [o for o in outputs if is_floating(element_type(o))]
    for rank, shape in SHAPES.items():
        ranked = [o for o in floats if rank_of(o) == rank]
        if len(ranked) == 1:
            return ranked[0]
        if ranked:
            listed = ", ".join(name_of(o) for o in ranked)
            raise EmbeddingOutputError(
                f"the model has {len(ranked)} floating-point outputs shaped as {shape} "
                f"({listed}); name the embedding with {FLAG} NAME"
            )
    if len(floats) == 1 and rank_of(floats[0]) is None:
        return floats[0]
    raise EmbeddingOutputError(
        f"no output of the model ({_listed(outputs)}) is one floating-point tensor shaped as "
        f"token embeddings or a pooled embedding; name the embedding with {FLAG} NAME"
    )


def embedding_of(source: Any, named: str | None = None) -> Any:
    """The embedding output of a Model (graph tensor) or a session (its output description).

    A name given here wins over the one the model declares (`declared`).
    """
    outputs = source.graph.outputs if hasattr(source, "graph") else source.get_outputs()
    return embedding_output(outputs, named or declared(source))


def declared(source: Any) -> str | None:
    """The embedding a Model's metadata or a session's model metadata names, if any."""
    metadata = getattr(source, "metadata", None)
    if not isinstance(metadata, Mapping) and hasattr(source, "get_modelmeta"):
        metadata = source.get_modelmeta().custom_metadata_map
    value = metadata.get(KEY) if isinstance(metadata, Mapping) else None
    return str(value) if value else None


def resolved_name(outputs: Sequence[Any], named: str | None = None) -> str | None:
    """The embedding's name, or None where the rule finds none (for records, not measurements)."""
    try:
        return name_of(embedding_output(outputs, named))
    except EmbeddingOutputError:
        return None


def recorded(metadata: Mapping[str, str], outputs: Sequence[Any]) -> dict[str, str]:
    """Model metadata with the embedding named (`KEY`), where it is declared or the rule finds one.

    An artifact's manifest keeps this, so that its sessions read the output the build measured.
    """
    name = resolved_name(outputs, metadata.get(KEY))
    return {**metadata, KEY: name} if name else dict(metadata)


def element_type(output: Any) -> object:
    """An output's element type, as its kind of description holds it."""
    if isinstance(output, Mapping):
        return output.get("dtype")
    dtype = getattr(output, "dtype", None)
    return dtype if dtype is not None else getattr(output, "type", None)


def rank_of(output: Any) -> int | None:
    """An output's rank, where its description declares a shape."""
    shape = output.get("shape") if isinstance(output, Mapping) else getattr(output, "shape", None)
    return len(shape) if isinstance(shape, (list, tuple)) else None


def name_of(output: Any) -> str:
    """An output's name, as its kind of description holds it."""
    return str(output["name"] if isinstance(output, Mapping) else output.name)


def _named(outputs: Sequence[Output], name: str) -> Output:
    found = next((o for o in outputs if name_of(o) == name), None)
    if found is None:
        raise EmbeddingOutputError(
            f"{FLAG} {name}: the model has no output of that name (its outputs: {_listed(outputs)})"
        )
    if not is_floating(element_type(found)):
        raise EmbeddingOutputError(
            f"{FLAG} {name}: that output holds {element_type(found)}, not floating-point embeddings"
        )
    return found


def _listed(outputs: Sequence[Any]) -> str:
    return ", ".join(name_of(o) for o in outputs) or "none"
