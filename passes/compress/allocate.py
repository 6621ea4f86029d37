"""One allocator of a budget over measured cost curves.

Each unit (a layer, an FFN, a block) offers a sequence of steps (remove the next neurons, keep
the next singular values); `step_costs[u][i]` is what unit u's step i costs the model, made
comparable across units by the caller, and `prices[u]` what one of u's steps spends of the
budget. Each round takes the cheapest next step whose price still fits, so a unit's steps are
taken in order; with costs that grow along each curve this is the greedy optimum of the
knapsack relaxation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def allocate(step_costs: Sequence[np.ndarray], prices: Sequence[float], budget: float) -> list[int]:
    """How many steps each unit takes: cheapest next step first, while its price fits `budget`.

    Ties go to the unit listed first.
    """
    taken = [0] * len(step_costs)
    while True:
        best, cheapest = -1, np.inf
        for u, costs in enumerate(step_costs):
            if taken[u] < len(costs) and prices[u] <= budget and float(costs[taken[u]]) < cheapest:
                best, cheapest = u, float(costs[taken[u]])
        if best < 0:
            return taken
        budget -= prices[best]
        taken[best] += 1


def step_sums(curve: np.ndarray, limit: int, step: int) -> np.ndarray:
    """The cost of each whole step of `step` successive entries of `curve`, up to `limit`."""
    count = min(limit, len(curve)) // step
    return np.array([float(np.sum(curve[i * step : (i + 1) * step])) for i in range(count)])
