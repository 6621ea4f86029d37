"""Per-unit sparsity levels from one budget of removals (allocation=global or sensitivity).

`sparsity` of all groups together is removed, each step going to the unit whose next removal
costs least (`compress.allocate`), no unit beyond twice `sparsity`; FFN neurons move in steps of
32 so that widths stay kernel-friendly. Under `global` a unit's costs are its successive OBS
removal costs (or sorted group scores) on the teacher's statistics, divided by the unit's output
energy tr([W; b]^T G [W; b]); under `sensitivity` they come from the output loss with the unit
alone pruned (`compress.sensitivity`), interpolated convex through (0, 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from nlpress.ir.progress import steps
from nlpress.passes.prune_patterns import (
    allocate,
    greedy_removals,
    group_scores,
)
from nlpress.passes.prune_sparsify.edits import Settings, Statistics, Unit, original_groups

GLOBAL_CAP = 2.0
# Allocation moves FFN neurons in steps of this many (when every width is a multiple), so that
# the pruned widths stay friendly to vectorized, tiled matmul kernels.
NEURON_STEP = 32

# A unit's successive removal costs, given the unit, how many groups it may remove and the step.
CostCurve = Callable[[Unit, int, int], np.ndarray]


def allocate_levels(
    units: Sequence[Unit], recorded: Mapping[str, int], level: float, curve: CostCurve
) -> dict[str, float]:
    """Per-unit levels that prune `level` of all groups together, cheapest first.

    `curve` gives each unit's successive removal costs, comparable across units (see
    `obs_cost_curve`, or the measured curves of allocation=sensitivity). Each unit keeps at
    least one group and at most GLOBAL_CAP times the level is pruned; FFN neurons move in steps
    of NEURON_STEP where the widths allow, so that every pruned width stays a multiple of it
    (then the total is rounded to a multiple too).
    """
    originals = [original_groups(u, recorded) for u in units]
    target = round(sum(originals) * (1.0 - level))
    total = max(0, sum(u.groups for u in units) - target)
    cap = min(GLOBAL_CAP * level, 1.0)
    limits = [
        max(0, u.groups - max(1, round(o * (1.0 - cap))))
        for u, o in zip(units, originals, strict=True)
    ]
    step = _step(units)
    pairs = list(zip(units, limits, strict=True))
    curves = [curve(u, limit, step) for u, limit in steps(pairs, "sensitivity of each unit")]
    counts = allocate(curves, round(total / step) * step, limits, step)
    return {
        u.name: 1.0 - (u.groups - count) / o
        for u, o, count in zip(units, originals, counts, strict=True)
    }


def _step(units: Sequence[Unit]) -> int:
    wide = all(u.kind == "neurons" and u.groups % NEURON_STEP == 0 for u in units)
    return NEURON_STEP if units and wide else 1


def obs_cost_curve(stats: Statistics, settings: Settings) -> CostCurve:
    """Removal costs on the teacher's statistics (allocation=global).

    A unit's successive removal costs are OBS costs (`greedy_removals`) under `obs`, else its
    sorted group scores; each is divided by the unit's calibration output energy
    tr([W; b]^T G [W; b]) (or its total score without a Gram), so units compare by relative
    damage.
    """
    return lambda unit, limit, _step: _cost_curve(unit, stats, settings, limit)


def _cost_curve(unit: Unit, stats: Statistics, settings: Settings, limit: int) -> np.ndarray:
    consumer = unit.consumer
    weight, bias = consumer.weight(), consumer.bias_value()
    gram = stats.gram(unit) if settings.criterion != "magnitude" else None
    if gram is None:
        producers = [lin.weight() for lin in unit.linears if lin is not consumer]
        score = np.sort(group_scores(weight, unit.groups, None, producers))
        return np.asarray(score[:limit] / max(float(np.sum(score)), 1e-30))
    bias_row = np.zeros(weight.shape[1]) if bias is None else bias
    target = np.vstack([weight, bias_row])
    energy = max(float(np.sum(target * (gram @ target))), 1e-30)
    if settings.criterion == "obs":
        _, costs = greedy_removals(gram, weight, bias, unit.groups, limit, settings.damping)
        return np.asarray(costs / energy)
    score = np.sort(group_scores(weight, unit.groups, gram))
    return np.asarray(score[:limit] / energy)
