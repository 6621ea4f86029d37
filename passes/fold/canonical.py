"""Canonical forms: constant operands second, decomposed layer norm and GELU fused."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from nlpress.ir.fusions import fuse_gelu, fuse_layer_norm
from nlpress.ir.graph import opset_version
from nlpress.ir.shapes import Shapes
from nlpress.passes.fold.graph_utils import is_constant


def canonical_operands(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Add(c, x) -> Add(x, c), Mul(c, x) -> Mul(x, c)."""
    count = 0
    for node in graph.nodes:
        if node.op in ("Add", "Mul") and len(node.inputs) == 2:
            a, b = node.inputs
            if is_constant(a) and not is_constant(b):
                node.inputs = [b, a]
                count += 1
    return count


def fuse(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Decomposed LayerNorm -> LayerNormalization; erf GELU -> Gelu (where the opset has them)."""
    version = opset_version(graph) or 0
    count = 0
    if version >= 17:
        count += fuse_layer_norm(graph, lambda t: shapes[t].shape)
    if version >= 20:
        count += fuse_gelu(graph)
    return count
