"""quantize-insert's stats, and the float layers it records in the model's metadata."""

from __future__ import annotations

import json

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Model
from nlpress.passes.quantize_insert.writer import Plan

FLOAT_KEY = "nlpress.quantize-insert.float"


def recorded_float(model: Model) -> list[str]:
    """The layers an earlier run kept in float for the budget (from the model's metadata)."""
    try:
        value = json.loads(model.metadata.get(FLOAT_KEY, "[]"))
    except json.JSONDecodeError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def size_stats(
    before: Model, after: Model, plan: Plan, selected: frozenset[int]
) -> dict[str, float]:
    """What was quantized, activation ranges, and bytes before and after."""
    weight_before = weight_after = 0
    stats: dict[str, float] = {}
    for index, layer in enumerate(plan.layers):
        if index not in selected:
            stats.setdefault(f"layer.{layer.label}.float_budget", 1.0)
            continue
        stats[f"layer.{layer.label}.quantized"] = 1.0
        if layer.weight is not None:
            values, scale = plan.quantized_weight(index)
            weight_before += np.asarray(layer.weight.values).nbytes
            weight_after += values.nbytes + scale.nbytes + scale.size  # int8 zero points
        for tensor in layer.inputs:
            if tensor.name in plan.ranges:
                lo, hi = plan.ranges[tensor.name]
                stats[f"activation.{tensor.name}.range"] = hi - lo
    table_before = table_after = 0
    for index, table in enumerate(plan.tables):
        values, scale = plan.quantized_table(index)
        table_before += np.asarray(table.constant.values).nbytes
        table_after += values.nbytes + scale.nbytes + scale.size
        stats[f"table.{table.constant.name}.quantized"] = 1.0
    weight_layers = [i for i in selected if plan.layers[i].weight is not None]
    stats.update(
        {
            "tables_quantized": float(len(plan.tables)),
            "table_bytes_before": float(table_before),
            "table_bytes_after": float(table_after),
            "layers_quantized": float(len(weight_layers)),
            "attention_quantized": float(len(selected) - len(weight_layers)),
            "layers_float": float(len(plan.layers) - len(selected)),
            "weight_bytes_before": float(weight_before),
            "weight_bytes_after": float(weight_after),
            "model_bytes_before": float(_constant_bytes(before.graph)),
            "model_bytes_after": float(_constant_bytes(after.graph)),
        }
    )
    return stats


def _constant_bytes(graph: gs.Graph) -> int:
    return sum(
        np.asarray(t.values).nbytes for t in graph.tensors().values() if isinstance(t, gs.Constant)
    )
