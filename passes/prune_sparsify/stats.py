"""prune-sparsify's stats: sizes, FLOPs per token and each unit's error before and after."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.passes.prune_sparsify.edits import Edit
from nlpress.passes.prune_sparsify.units import prunable_linears


def size_stats(graph: gs.Graph) -> dict[str, float]:
    """Parameters, nonzeros and MatMul FLOPs per token of the graph."""
    params = nonzero = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.values.dtype.kind == "f":
            params += tensor.values.size
            nonzero += int(np.count_nonzero(tensor.values))
    dense = sparse = 0
    for lin in prunable_linears(graph):
        k, n = lin.shape
        dense += 2 * k * n
        sparse += 2 * int(np.count_nonzero(lin.matmul.weight.values))
    return {
        "params": float(params),
        "nonzero_params": float(nonzero),
        "matmul_flops_per_token": float(dense),
        "nonzero_matmul_flops_per_token": float(sparse),
    }


def suffixed(values: Mapping[str, float], suffix: str) -> dict[str, float]:
    """The stats with `_suffix` added to each key."""
    return {f"{key}_{suffix}": value for key, value in values.items()}


def edit_stats(edits: Sequence[Edit]) -> dict[str, float]:
    """How many units were pruned, and their relative output errors before and after the refit."""
    stats: dict[str, float] = {"units_pruned": float(len(edits))}
    before = [e.error_before for e in edits if e.error_before is not None]
    after = [e.error_after for e in edits if e.error_after is not None]
    if before:
        stats["recovery_error_before"] = float(np.mean(before))
    if after:
        stats["recovery_error_after"] = float(np.mean(after))
    for edit in edits:
        stats[f"sparsity:{edit.unit.name}"] = edit.sparsity
        if edit.error_before is not None:
            stats[f"recovery_error_before:{edit.unit.name}"] = edit.error_before
        if edit.error_after is not None:
            stats[f"recovery_error_after:{edit.unit.name}"] = edit.error_after
    return stats
