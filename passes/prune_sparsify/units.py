"""Which units prune-sparsify prunes: layers' weights, FFN neurons or attention heads.

Units are found by shape of the graph (`ir.linear`, `ir.blocks`). Structured sparsity is relative
to the original width, which the pass records in the model's metadata
(`nlpress.prune-sparsify.widths`, by consumer node name), so a second run at the same sparsity
finds the target already met.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from nlpress.ir import Model
from nlpress.ir.blocks import activation_nodes, attention_blocks, ffn_pairs
from nlpress.ir.linear import Linear, linears
from nlpress.ir.verify import infer_shapes
from nlpress.passes.base import PreconditionError
from nlpress.passes.prune_sparsify.edits import Edit, Unit, original_groups

WIDTHS_KEY = "nlpress.prune-sparsify.widths"


def prunable_linears(graph: gs.Graph) -> list[Linear]:
    """The linears prune-sparsify rewrites: a Gemm only with alpha = beta = 1 and an [n] bias."""
    return [lin for lin in linears(graph) if _unscaled(lin)]


def _unscaled(linear: Linear) -> bool:
    if linear.node.op != "Gemm":
        return True
    if linear.alpha != 1.0 or linear.beta != 1.0:
        return False
    return linear.bias is None or np.asarray(linear.bias.values).size == linear.shape[1]


def working_copy(model: Model, with_shapes: bool) -> Model:
    """A copy to analyse and rewrite; shape-inferred for heads (side inputs need shapes)."""
    work = model.copy()
    if with_shapes:
        try:
            work = infer_shapes(model)
        except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
            work = model.copy()
    work.graph.toposort()
    return work


def ffn_units(graph: gs.Graph, layers: list[Linear]) -> tuple[list[Unit], dict[str, float]]:
    """One unit per FFN pair, and the counts of FFNs found and not recognized."""
    pairs = ffn_pairs(graph, layers)
    if not pairs:
        raise PreconditionError(
            "pattern=neurons found no FFN it recognizes (MatMul(+bias) -> elementwise "
            "activation -> MatMul(+bias), the intermediate read only by that chain); "
            "run fold first, or use pattern=unstructured"
        )
    covered = {id(n) for p in pairs for n in p.chain}
    unrecognized = sum(id(n) not in covered for n in activation_nodes(graph))
    found: dict[str, float] = {"ffn_pairs_found": len(pairs), "ffn_unrecognized": unrecognized}
    return [Unit("neurons", p) for p in pairs], found


def head_units(graph: gs.Graph, layers: list[Linear]) -> tuple[list[Unit], dict[str, float]]:
    """One unit per attention block, and the counts of blocks found and not recognized."""
    blocks = attention_blocks(graph, layers)
    if not blocks:
        raise PreconditionError(
            "pattern=heads found no attention it recognizes (Q/K/V projections -> Reshape "
            "[.., heads, head_dim] -> Transpose -> MatMul/Softmax -> ... -> Reshape back -> "
            "output projection); run fold first (static shapes help), or use pattern=neurons"
        )
    covered = {id(n) for b in blocks for n in b.region}
    softmaxes = [n for n in graph.nodes if n.op in ("Softmax", "LogSoftmax")]
    found: dict[str, float] = {
        "attention_blocks_found": len(blocks),
        "attention_unrecognized": sum(id(n) not in covered for n in softmaxes),
    }
    return [Unit("heads", b) for b in blocks], found


def recorded_widths(model: Model) -> dict[str, int]:
    """The original widths an earlier run recorded, by consumer node name."""
    try:
        value = json.loads(model.metadata.get(WIDTHS_KEY, "{}"))
    except json.JSONDecodeError:
        return {}
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}


def finish(work: Model, edits: Sequence[Edit], recorded: Mapping[str, int]) -> Model:
    """The rewritten model: dead constants dropped, structured widths recorded in metadata."""
    work.graph.toposort()
    structured = [e for e in edits if e.kept is not None]
    if not structured:
        return work
    widths = dict(recorded)
    for edit in structured:
        widths[edit.unit.name] = original_groups(edit.unit, recorded)
    metadata = {**work.metadata, WIDTHS_KEY: json.dumps(widths, sort_keys=True)}
    return replace(work, metadata=metadata)
