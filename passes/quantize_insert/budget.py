"""The fidelity budget: the fewest layers kept float so that the output cosine meets c.

The shared driver (`compress.budget`) walks a ladder whose step k keeps the k most sensitive
layers float. A layer's sensitivity is how much the cosine rises when it alone stays float,
measured on a spread of calibration batches; their running sum from the fully quantized cosine
up predicts the step the driver starts from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nlpress.ir import Feeds, Model
from nlpress.ir.progress import steps
from nlpress.passes.calibration import embedding_outputs
from nlpress.passes.compress.budget import Ladder, meet_budget
from nlpress.passes.compress.sensitivity import Fidelity
from nlpress.passes.quantize_insert.writer import Plan

# Layer sensitivities for the budget are measured on calibration batches holding about this
# many sequences, spread over the set (4 batches of 16, or 64 of one at a static batch of 1).
SENSITIVITY_ROWS = 64


def float_layers(
    budget: float, teacher: Model, plan: Plan, feeds: Sequence[Feeds]
) -> tuple[frozenset[int], dict[str, float]]:
    """The layers to quantize: all but the fewest most sensitive, so the cosine meets `budget`.

    The ladder's step k keeps the k most sensitive layers float; the sensitivities are measured
    only when the fully quantized model misses the budget, and their sum predicts the step.
    """
    fidelity = Fidelity(teacher, feeds)
    everything = frozenset(range(len(plan.layers)))
    order: list[int] = []
    stats: dict[str, float] = {}
    quantized: list[np.ndarray] = []  # the fully quantized model's outputs, from step 0

    def selected(step: int) -> frozenset[int]:
        return everything - set(order[:step])

    def cosine(step: int) -> float:
        chosen = selected(step)
        if not chosen and not plan.tables:
            return 1.0  # the float model itself
        outputs = embedding_outputs(plan.build(chosen), feeds)
        if step == 0:
            quantized[:] = outputs
        return fidelity.outputs_cosine(outputs, range(len(feeds)))

    def guess(first: float) -> int:
        gains = sensitivities(fidelity, plan, quantized)
        order.extend(sorted(gains, key=lambda i: -gains[i]))
        stats.update({f"layer.{plan.layers[i].label}.sensitivity": g for i, g in gains.items()})
        stats["sensitivity_models"] = float(len(gains))
        return predicted_count(first, [gains[i] for i in order], budget)

    met = meet_budget(budget, Ladder(cosine, len(everything)), guess)
    for i in order[: met.step]:
        stats[f"layer.{plan.layers[i].label}.float_budget"] = 1.0
    return selected(met.step), {**met.stats(), **stats}


def sensitivities(
    fidelity: Fidelity, plan: Plan, quantized: Sequence[np.ndarray]
) -> dict[int, float]:
    """How much the cosine rises when each layer alone stays float, on a spread of batches.

    `quantized` holds the fully quantized model's outputs on every batch, the base they rise from.
    """
    few = sensitivity_batches(fidelity.feeds)
    everything = frozenset(range(len(plan.layers)))
    base = fidelity.outputs_cosine([quantized[i] for i in few], few)
    return {
        i: fidelity.cosine(plan.build(everything - {i}), few) - base
        for i in steps(sorted(everything), "sensitivity of each layer")
    }


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
