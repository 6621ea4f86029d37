"""Deduplication: identical initializers and identical nodes on the same inputs become one."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir.evaluate import NOT_EVALUABLE
from nlpress.ir.graph import is_graph_output
from nlpress.ir.shapes import Shapes
from nlpress.passes.fold.graph_utils import has_subgraph


def deduplicate(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Identical initializers -> one; identical nodes on identical inputs -> one."""
    return _dedupe_constants(graph) + _dedupe_nodes(graph)


def _dedupe_constants(graph: gs.Graph) -> int:
    seen: dict[tuple[object, ...], gs.Constant] = {}
    replace: dict[int, gs.Constant] = {}
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant) or is_graph_output(graph, tensor):
            continue
        values = np.asarray(tensor.values)
        key = (values.dtype.str, values.shape, values.tobytes())
        if key in seen:
            replace[id(tensor)] = seen[key]
        else:
            seen[key] = tensor
    for node in graph.nodes:
        if any(id(t) in replace for t in node.inputs):
            node.inputs = [replace.get(id(t), t) for t in node.inputs]
    return len(replace)


def _dedupe_nodes(graph: gs.Graph) -> int:
    seen: dict[tuple[object, ...], gs.Node] = {}
    count = 0
    for node in list(graph.nodes):
        if node.op in NOT_EVALUABLE or has_subgraph(node) or not node.outputs:
            continue
        key = (
            node.op,
            node.domain,
            repr(sorted(node.attrs.items())),
            tuple(id(t) for t in node.inputs),
        )
        first = seen.get(key)
        if first is None or len(first.outputs) != len(node.outputs):
            seen.setdefault(key, node)
            continue
        if any(is_graph_output(graph, t) for t in node.outputs):
            continue
        for mine, theirs in zip(node.outputs, first.outputs, strict=True):
            for reader in list(mine.outputs):
                reader.inputs = [theirs if t is mine else t for t in reader.inputs]
        count += 1
    return count
