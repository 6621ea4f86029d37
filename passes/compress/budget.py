"""The budget driver: the least relaxation of a compression whose output cosine meets the budget.

A lossy pass lays its compression out as a ladder of states: step 0 is the compression as planned,
and each step up gives some of it back (one more layer kept float, one unit's sparsity halved), so
the pooled cosine of the model's embedding output to the teacher's (`compress.sensitivity`) rises
towards 1 at the top. The driver measures step 0; where that misses the budget it starts at the
pass's guess, climbs while the cosine misses, then descends while the step below meets it too. Where
the cosine rises with the step, the step found is the least that meets the budget.
Whether it was met is in the stats; `nlpress.compiler.check_budgets` raises `BudgetNotMet`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Ladder:
    """A compression's states by step, measured once each.

    Attributes:
        cosine: The output cosine at a step (0 = as planned); steps may be asked in any order.
        top: The highest step: the least compression the pass will give back to.
    """

    cosine: Callable[[int], float]
    top: int
    measured: dict[int, float] = field(default_factory=dict)

    def at(self, step: int) -> float:
        """The cosine at `step`, measured on first use."""
        if step not in self.measured:
            self.measured[step] = self.cosine(step)
            log.debug("budget step %d: cosine %.5f", step, self.measured[step])
        return self.measured[step]


@dataclass(frozen=True)
class Met:
    """Where the driver stopped: the step, its cosine, and the cosine as planned."""

    step: int
    cosine: float
    first: float
    budget: float
    measured: int

    def stats(self) -> dict[str, float]:
        """The budget's stats, the same keys for every pass."""
        return {
            "budget_cosine_first": self.first,
            "budget_cosine": self.cosine,
            "budget_met": float(self.cosine >= self.budget),
            "budget_steps": float(self.step),
            "budget_models": float(self.measured),
        }


def meet_budget(budget: float, ladder: Ladder, guess: Callable[[float], int] | None = None) -> Met:
    """The least step of `ladder` whose cosine meets `budget`, starting from `guess(first)`."""
    first = ladder.at(0)
    step = 0
    if first < budget:
        step = min(max(guess(first) if guess else 1, 1), ladder.top)
        while step < ladder.top and ladder.at(step) < budget:
            step += 1
        while step > 1 and ladder.at(step) >= budget and ladder.at(step - 1) >= budget:
            step -= 1
    return Met(step, ladder.at(step), first, budget, len(ladder.measured))
