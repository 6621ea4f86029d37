"""identity-elim: Identity(x), Dropout(x), Cast(x:T, to=T), Reshape(x:S, S) -> x."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.ir.graph import bypass, constant_value, is_graph_output
from nlpress.ir.verify import infer_shapes
from nlpress.passes.base import Pass, PassResult


@dataclass(frozen=True)
class IdentityElim(Pass):
    """Remove nodes whose output equals their input: Identity, Dropout, no-op Cast and Reshape.

    A Cast is removed when its input already has the target type, a Reshape when the input's
    static shape equals the target shape. Graph output names are kept.
    """

    name = "identity-elim"

    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        """Bypass every no-op node of a shape-inferred copy of `model`."""
        out = _with_shapes(model)
        graph = out.graph
        removed: dict[str, int] = {}
        for node in list(graph.nodes):
            if _is_noop(graph, node) and bypass(graph, node, node.inputs[0], node.outputs[0]):
                removed[node.op] = removed.get(node.op, 0) + 1
        stats = {f"removed_{op}": count for op, count in sorted(removed.items())}
        stats["removed"] = sum(removed.values())
        return PassResult(out, bool(removed), stats)


def _with_shapes(model: Model) -> Model:
    try:
        return infer_shapes(model)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
        return model.copy()


def _is_noop(graph: gs.Graph, node: gs.Node) -> bool:
    if node.op == "Identity":
        return True
    if node.op == "Dropout":
        return _is_inference_dropout(graph, node)
    if node.op == "Cast":
        return _is_noop_cast(node)
    if node.op == "Reshape":
        return _is_noop_reshape(node)
    return False


def _is_inference_dropout(graph: gs.Graph, node: gs.Node) -> bool:
    if len(node.outputs) > 1:
        mask = node.outputs[1]
        if mask.outputs or is_graph_output(graph, mask):
            return False
    if len(node.inputs) > 2 and node.inputs[2].name:
        training = constant_value(node.inputs[2])
        return training is not None and not bool(training)
    return True


def _is_noop_cast(node: gs.Node) -> bool:
    source = node.inputs[0]
    if source.dtype is None or "to" not in node.attrs:
        return False
    target = onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"])
    return bool(np.dtype(source.dtype) == target)


def _is_noop_reshape(node: gs.Node) -> bool:
    source = node.inputs[0]
    target = constant_value(node.inputs[1])
    if source.shape is None or target is None:
        return False
    if not all(isinstance(d, int) for d in source.shape):
        return False
    dims = list(target.astype(np.int64))
    allow_zero = bool(node.attrs.get("allowzero", 0))
    resolved = [
        source.shape[i] if d == 0 and not allow_zero and i < len(source.shape) else int(d)
        for i, d in enumerate(dims)
    ]
    if resolved.count(-1) == 1:
        known = int(np.prod([d for d in resolved if d != -1]))
        total = int(np.prod(source.shape))
        if known == 0 or total % known:
            return False
        resolved[resolved.index(-1)] = total // known
    return resolved == list(source.shape)
