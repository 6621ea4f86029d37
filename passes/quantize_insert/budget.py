"""The fidelity budget: the fewest layers kept float so that the output cosine meets c.

The cosine between the quantized and the input model's first output (mean-pooled over real
tokens) is measured on the calibration data. Below c, each layer's sensitivity is how much the
cosine rises when that layer alone stays float, measured on a spread of calibration batches;
the most sensitive layers stay float, as many as the summed sensitivities predict, then one more
or one fewer at a time until the least count that meets c on all the data is found.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from nlpress.ir import Feeds, Model
from nlpress.ir.progress import steps
from nlpress.passes.calibration import (
    first_outputs,
)
from nlpress.passes.compress.sensitivity import Fidelity
from nlpress.passes.quantize_insert.writer import Plan

log = logging.getLogger(__name__)

# Layer sensitivities for the budget are measured on calibration batches holding about this
# many sequences, spread over the set (4 batches of 16, or 64 of one at a static batch of 1).
SENSITIVITY_ROWS = 64


def meet_budget(
    budget: float, teacher: Model, plan: Plan, feeds: Sequence[Feeds]
) -> tuple[frozenset[int], dict[str, float]]:
    """Keep the most sensitive layers in float until the output cosine meets `budget`.

    One model (one ONNX Runtime session) per layer set tried: the fully quantized one on all
    the data (its cosine on the sensitivity batches taken from the same outputs), one per layer
    on the sensitivity batches, then the count of float layers that the summed sensitivities
    predict, checked on all the data and moved one layer at a time to the least that meets it.
    """
    fidelity = Fidelity(teacher, feeds)
    cosine = fidelity.outputs_cosine
    few = sensitivity_batches(feeds)
    scores = 0

    def score(selected: frozenset[int], index: Sequence[int]) -> float:
        nonlocal scores
        if not selected and not plan.tables:
            return 1.0  # the float model itself
        scores += 1
        return fidelity.cosine(plan.build(selected), index)

    everything = frozenset(range(len(plan.layers)))
    every = range(len(feeds))
    outputs = first_outputs(plan.build(everything), feeds)
    scores += 1
    first = cosine(outputs, every)
    stats: dict[str, float] = {"budget_cosine_first": first}
    selected, result = everything, first
    if first < budget:
        base = cosine([outputs[i] for i in few], few)
        gains = {
            i: score(everything - {i}, few) - base
            for i in steps(sorted(everything), "sensitivity of each layer")
        }
        for i, gain in gains.items():
            stats[f"layer.{plan.layers[i].label}.sensitivity"] = gain
        order = sorted(gains, key=lambda i: -gains[i])
        count = predicted_count(first, [gains[i] for i in order], budget)
        results = {0: first}

        def at(count: int) -> float:
            if count not in results:
                results[count] = score(everything - set(order[:count]), every)
                log.debug("%d layers float: cosine %.5f", count, results[count])
            return results[count]

        while count < len(order) and at(count) < budget:
            count += 1
        while count > 1 and at(count) >= budget and at(count - 1) >= budget:
            count -= 1
        selected, result = everything - set(order[:count]), at(count)
        for i in order[:count]:
            stats[f"layer.{plan.layers[i].label}.float_budget"] = 1.0
    stats.update(
        {"budget_cosine": result, "budget_met": float(result >= budget), "budget_models": scores}
    )
    return selected, stats


def predicted_count(first: float, gains: Sequence[float], budget: float) -> int:
    """The fewest layers (most sensitive first) whose summed gains lift `first` to `budget`."""
    total = first
    for count, gain in enumerate(gains, start=1):
        total += max(gain, 0.0)
        if total >= budget:
            return count
    return len(gains)


def sensitivity_batches(feeds: Sequence[Feeds], rows: int = SENSITIVITY_ROWS) -> list[int]:
    """Indices of calibration batches spread evenly over the set, about `rows` rows in all."""
    if not feeds:
        return []
    sizes = [len(next(iter(batch.values()))) if batch else 1 for batch in feeds]
    count = min(len(feeds), max(1, -(-rows * len(feeds) // max(sum(sizes), 1))))
    spread = np.linspace(0, len(feeds) - 1, count).round().astype(int)
    return sorted({int(i) for i in spread})
