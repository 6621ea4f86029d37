"""The search: the Pareto frontier of (loss, cost) over one choice per unit.

Picking one option per unit so that the summed cost is least while the summed loss stays within
a budget is a multiple-choice knapsack. With losses counted in bins of `max_loss / BINS`
(rounded up, so a plan never predicts less loss than its options add to), dynamic programming
over the units gives the least cost at every loss bin at once; the bins where that cost drops
are the frontier, each with its plan. Costs are the objective plus a tie-breaking fraction of
the other measure, so of two plans equally fast the smaller wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BINS = 4000
# The other measure's weight, per unit of it: it decides ties (a byte is worth 1e-12 ms, a
# millisecond one byte), never a trade against the objective.
TIE_BREAK = {"latency": 1e-12, "size": 1.0}


@dataclass(frozen=True)
class Option:
    """One choice for one unit: its predicted loss, latency and bytes."""

    loss: float
    ms: float
    bytes: float


@dataclass(frozen=True)
class Point:
    """A plan on the frontier: the option taken per unit and the predicted totals."""

    picks: tuple[int, ...]
    loss: float
    ms: float
    bytes: float


def frontier(
    options: Sequence[Sequence[Option]], objective: str, max_loss: float, bins: int = BINS
) -> list[Point]:
    """The plans of least cost for each loss up to `max_loss`, loss ascending, cost descending.

    `options[u]` are unit u's options; `objective` is "latency" or "size".
    """
    width = max_loss / bins
    best = np.full(bins + 1, np.inf)
    best[0] = 0.0
    taken: list[np.ndarray] = []
    for unit in options:
        after, pick = np.full(bins + 1, np.inf), np.full(bins + 1, -1)
        for j, option in enumerate(unit):
            shift = _bins(option.loss, width)
            if shift > bins:
                continue
            moved = np.full(bins + 1, np.inf)
            moved[shift:] = best[: bins + 1 - shift] + _cost(option, objective)
            better = moved < after
            after[better], pick[better] = moved[better], j
        best = after
        taken.append(pick)
    points: list[Point] = []
    least = np.inf
    for b in range(bins + 1):
        if best[b] < least:
            least = best[b]
            points.append(_point(options, _picks(taken, options, b, width)))
    return points


def _picks(
    taken: Sequence[np.ndarray], options: Sequence[Sequence[Option]], b: int, width: float
) -> tuple[int, ...]:
    """Walk the table back from loss bin `b`: the option each unit took."""
    picks = []
    for unit, pick in zip(reversed(options), reversed(taken), strict=True):
        j = int(pick[b])
        picks.append(j)
        b -= _bins(unit[j].loss, width)
    return tuple(reversed(picks))


def _point(options: Sequence[Sequence[Option]], picks: tuple[int, ...]) -> Point:
    chosen = [unit[j] for unit, j in zip(options, picks, strict=True)]
    return Point(
        picks,
        sum(o.loss for o in chosen),
        sum(o.ms for o in chosen),
        sum(o.bytes for o in chosen),
    )


def _bins(loss: float, width: float) -> int:
    return math.ceil(max(loss, 0.0) / width - 1e-9) if width > 0 else 0


def _cost(option: Option, objective: str) -> float:
    if objective == "latency":
        return option.ms + option.bytes * TIE_BREAK[objective]
    return option.bytes + option.ms * TIE_BREAK[objective]


def cheapest_within(points: Sequence[Point], max_loss: float) -> Point | None:
    """The frontier's cheapest plan whose predicted loss is at most `max_loss`."""
    within = [p for p in points if p.loss <= max_loss]
    return within[-1] if within else None
