"""pool: h[batch, sequence, hidden] -> sentence_embedding[batch, hidden], a new graph output.

Mean pooling is `sum_t(h[:, t] * mask[:, t]) / max(sum_t(mask[:, t]), eps)`, with the
`attention_mask` input as mask (every token when the model has none); cls pooling is `h[:, 0]`.
With `normalize`, the result is divided by `max(||e||_2, eps)`. The model's outputs are kept;
the embedding is added after them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

from nlpress.ir import Feeds, Model
from nlpress.ir.embedding import EmbeddingOutputError, embedding_of
from nlpress.ir.graph import fresh_name, opset_version
from nlpress.passes.base import Pass, PassResult, PreconditionError

OUTPUT = "sentence_embedding"
MASK = "attention_mask"
MODES = ("mean", "cls")

# The mean divides by at least this many tokens, as sentence-transformers clamps its count.
COUNT_EPS = 1e-9
# L2 normalization divides by at least this norm, as torch.nn.functional.normalize does.
NORM_EPS = 1e-12

# The first opset in which each op takes its axes as an input instead of an attribute.
_AXES_INPUT_SINCE = {"ReduceSum": 13, "ReduceMean": 18, "Unsqueeze": 13}


@dataclass(frozen=True)
class Pool(Pass):
    """Pool the embedding output's tokens into a `sentence_embedding` output.

    The embedding output is the one `ir/embedding.py` chooses.

    A model that already has a `sentence_embedding` output is left unchanged.

    Options:
        mode: mean (over the tokens the attention mask marks; every token without a mask) or
            cls (the first token's embedding).
        normalize: Divide each embedding by its L2 norm (at least 1e-12).
    """

    name: ClassVar[str] = "pool"
    adds_outputs: ClassVar[bool] = True

    mode: Literal["mean", "cls"] = "mean"
    normalize: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {', '.join(MODES)}")

    def requires(self, model: Model) -> None:
        """The embedding output must be token embeddings [batch, sequence, hidden] of floats."""
        graph = model.graph
        if _pooled(graph) is not None:
            return
        if not graph.outputs:
            raise PreconditionError("pool: the model has no outputs")
        try:
            tokens = embedding_of(model)
        except EmbeddingOutputError as exc:
            raise PreconditionError(f"pool: {exc}") from exc
        if tokens.shape is None or len(tokens.shape) != 3:
            raise PreconditionError(
                f"pool: the embedding output {tokens.name} has shape {tokens.shape}; pooling "
                "needs token embeddings [batch, sequence, hidden]"
            )
        if OUTPUT in graph.tensors():
            raise PreconditionError(f"pool: the graph has a tensor named {OUTPUT} already")
        mask = _mask(graph)
        if mask is not None and (mask.shape is None or len(mask.shape) != 2):
            raise PreconditionError(
                f"pool: input {MASK} has shape {mask.shape}; expected [batch, sequence]"
            )

    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        """Add the pooling nodes and the `sentence_embedding` output to a copy of `model`."""
        self.requires(model)
        if _pooled(model.graph) is not None:
            return PassResult(model, False, {"pooled": 0})
        out = model.copy()
        graph = out.graph
        builder = _Builder(graph)
        tokens = embedding_of(out)
        if self.mode == "cls":
            first = builder.constant("pool_first", np.array(0, np.int64))
            pooled = builder.op("Gather", [tokens, first], axis=1)
        else:
            pooled = _mean(builder, tokens, _mask(graph))
        if self.normalize:
            pooled = _normalized(builder, pooled)
        pooled.name, pooled.shape = OUTPUT, [tokens.shape[0], tokens.shape[2]]
        graph.outputs.append(pooled)
        return PassResult(out, True, {"pooled": 1, "nodes_added": builder.added})


def _pooled(graph: gs.Graph) -> gs.Tensor | None:
    """The graph's `sentence_embedding` output, if it has one."""
    return next((t for t in graph.outputs if t.name == OUTPUT), None)


def _mask(graph: gs.Graph) -> gs.Tensor | None:
    return next((t for t in graph.inputs if t.name == MASK), None)


def _mean(builder: _Builder, tokens: gs.Tensor, mask: gs.Tensor | None) -> gs.Tensor:
    """sum(h * mask) / max(sum(mask), eps) over the sequence; a plain mean without a mask."""
    if mask is None:
        return builder.reduce("ReduceMean", tokens, axis=1, keepdims=False)
    weights = builder.op("Cast", [mask], dtype=tokens.dtype, to=_onnx_dtype(tokens.dtype))
    weights = builder.unsqueeze(weights, axis=-1)
    summed = builder.reduce(
        "ReduceSum", builder.op("Mul", [tokens, weights]), axis=1, keepdims=False
    )
    count = builder.reduce("ReduceSum", weights, axis=1, keepdims=False)
    floor = builder.constant("pool_count_eps", np.array(COUNT_EPS, tokens.dtype))
    return builder.op("Div", [summed, builder.op("Max", [count, floor])])


def _normalized(builder: _Builder, pooled: gs.Tensor) -> gs.Tensor:
    """Each embedding e divided by max(sqrt(sum(e * e)), eps) over the hidden axis."""
    squares = builder.op("Mul", [pooled, pooled])
    norm = builder.op("Sqrt", [builder.reduce("ReduceSum", squares, axis=-1, keepdims=True)])
    floor = builder.constant("pool_norm_eps", np.array(NORM_EPS, pooled.dtype))
    return builder.op("Div", [pooled, builder.op("Max", [norm, floor])])


def _onnx_dtype(dtype: Any) -> int:
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


class _Builder:
    """Appends nodes with fresh names to a graph, counting them."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.names = set(graph.tensors()) | {n.name for n in graph.nodes}
        self.added = 0

    def op(
        self, op: str, inputs: list[gs.Tensor], dtype: object = None, **attrs: object
    ) -> gs.Tensor:
        """A new `op` node on `inputs`; its output has `dtype`, by default the first input's."""
        name = fresh_name(self.names, f"pool_{op.lower()}")
        result = gs.Variable(name, dtype=dtype or inputs[0].dtype)
        node = gs.Node(op, fresh_name(self.names, f"pool_{op}"), attrs, inputs, [result])
        self.graph.nodes.append(node)
        self.added += 1
        return result

    def constant(self, wanted: str, value: np.ndarray) -> gs.Constant:
        """A new initializer."""
        return gs.Constant(fresh_name(self.names, wanted), value)

    def reduce(self, op: str, x: gs.Tensor, axis: int, keepdims: bool) -> gs.Tensor:
        """A reduction over one axis, its axes an input or an attribute as the opset wants."""
        return self._with_axes(op, x, axis, keepdims=int(keepdims))

    def unsqueeze(self, x: gs.Tensor, axis: int) -> gs.Tensor:
        """The tensor with a new axis of size 1 at `axis`."""
        return self._with_axes("Unsqueeze", x, axis)

    def _with_axes(self, op: str, x: gs.Tensor, axis: int, **attrs: object) -> gs.Tensor:
        opset = opset_version(self.graph) or 1
        if opset >= _AXES_INPUT_SINCE[op]:
            axes = self.constant(f"pool_{op.lower()}_axes", np.array([axis], np.int64))
            return self.op(op, [x, axes], **attrs)
        return self.op(op, [x], axes=[axis], **attrs)
