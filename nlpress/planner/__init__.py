"""The planner: one accuracy budget, a choice per unit between float, int8, 4-bit and cuts.

The run reads as its steps:

1. units (`units`): FFN pairs, attention blocks, other linears and embedding tables;
2. the accuracy model (`accuracy`): each part of each choice measured on one unit alone, on
   SAMPLE_ROWS calibration rows spread over the set;
3. the cost model (`cost`): each unit's kernels timed on the target, or estimated;
4. the frontier (`search`): the least-cost plan at every predicted loss;
5. verification: the plan for the budget is applied and scored on held-out batches; where the
   loss measured exceeds the budget, the predicted losses are scaled by measured / predicted
   and the frontier read again, at most `ROUNDS` times.

The plan is pipeline text (`units.pipeline_text`) that compiles without searching again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nlpress.ir import Feeds, Model
from nlpress.ir.progress import step
from nlpress.passes import parse, run_pipeline
from nlpress.passes.compress.sensitivity import Fidelity
from nlpress.passes.quantize_insert import sensitivity_batches
from nlpress.planner.accuracy import Sensitivities, measure, model_bytes
from nlpress.planner.cost import Costs
from nlpress.planner.search import Option, Point, cheapest_within, frontier
from nlpress.planner.units import Choice, Unit, choices, find_units, pipeline_text
from nlpress.targets.target import Target

OBJECTIVES = ("latency", "size")
ROUNDS = 3
SAMPLE_ROWS = 128
# The frontier spans predicted losses up to this multiple of the budget's.
SPAN = 4.0


@dataclass(frozen=True)
class Planned:
    """A frontier point as a plan: its choices, pipeline text and predicted totals."""

    choices: dict[str, Choice]
    pipeline: str
    cosine: float
    ms: float
    bytes: float

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready record; choices by unit name, as text like `int8-0.25`."""
        return {
            "predicted_cosine": round(self.cosine, 6),
            "predicted_ms": round(self.ms, 4),
            "predicted_bytes": round(self.bytes),
            "choices": {name: str(c) for name, c in self.choices.items()},
        }


@dataclass(frozen=True)
class Plan:
    """What the planner chose and what it chose from.

    Attributes:
        budget: The least mean pooled cosine asked for.
        objective: latency or size.
        chosen: The plan that meets the budget (None: none does).
        cosine: The chosen plan's cosine measured on the verification batches.
        frontier: Every plan of least predicted cost per predicted loss (the last round's).
        rounds: How many plans were verified.
        scale: Measured loss / predicted loss of the last plan verified (additivity).
        float_ms: The predicted kernel latency with every unit float.
        float_bytes: The weights' bytes with every unit float.
        measured_costs: Whether kernel costs were timed on the target (else estimated).
    """

    budget: float
    objective: str
    chosen: Planned | None
    cosine: float
    frontier: tuple[Planned, ...]
    rounds: int
    scale: float
    float_ms: float
    float_bytes: float
    measured_costs: bool

    def describe(self) -> str:
        """The frontier, the plan chosen and its pipeline text, for a person."""
        lines = [
            f"budget cosine {self.budget}, objective {self.objective}; kernel costs "
            f"{'timed on the target' if self.measured_costs else 'estimated'}",
            f"  {'cosine':>9}  {'kernel ms':>10}  {'weights MiB':>12}   (predicted frontier)",
        ]
        for point in self.frontier:
            mark = "  <- chosen" if self.chosen and point.choices == self.chosen.choices else ""
            lines.append(
                f"  {point.cosine:9.5f}  {point.ms:10.3f}  {point.bytes / 2**20:12.2f}{mark}"
            )
        if self.chosen is None:
            lines.append(f"no plan meets the budget (the last verified reached {self.cosine:.5f})")
            return "\n".join(lines)
        kinds = Counter(str(c) for c in self.chosen.choices.values())
        lines += [
            f"chosen: cosine {self.cosine:.5f} verified ({self.chosen.cosine:.5f} predicted, "
            f"{self.rounds} round{'s' if self.rounds > 1 else ''}); kernels "
            f"{self.chosen.ms / self.float_ms:.0%} of float, weights "
            f"{self.chosen.bytes / self.float_bytes:.0%}",
            "  " + ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items())),
            self.chosen.pipeline,
        ]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The manifest's record of the plan."""
        return {
            "budget_cosine": self.budget,
            "objective": self.objective,
            "verified_cosine": round(self.cosine, 6),
            "rounds": self.rounds,
            "additivity": round(self.scale, 4),
            "float_ms": round(self.float_ms, 4),
            "float_bytes": round(self.float_bytes),
            "costs": "measured" if self.measured_costs else "estimated",
            "chosen": {**self.chosen.as_dict(), "pipeline": self.chosen.pipeline}
            if self.chosen
            else None,
            "frontier": [p.as_dict() for p in self.frontier],
        }


def plan(
    model: Model,
    feeds: Sequence[Feeds],
    check: Sequence[Feeds],
    budget: float,
    objective: str,
    target: Target,
    rows: int,
    head: str = "fold",
) -> Plan:
    """Plan `model` (folded) for `budget`, measured on `feeds` and verified on `check`.

    `rows` is the rows a linear sees per call in the workload timed; `head` starts the
    pipeline text (fold, with the shapes the model was folded with).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: expected latency or size")
    units = find_units(model)
    sample = [feeds[i] for i in sensitivity_batches(feeds, SAMPLE_ROWS)]
    sensitivities = measure(model, units, sample)
    costs = Costs(target, rows)
    with step("time kernels"):
        options = [_options(unit, sensitivities, costs) for unit in units]
    fidelity = Fidelity(model, check)
    allowed, scale, rounds = 1.0 - budget, 1.0, 0
    chosen: Planned | None = None
    cosine = 1.0
    points: list[Point] = []
    while rounds < ROUNDS:
        points = frontier(options, objective, max(SPAN * allowed, 1e-6))
        point = cheapest_within(points, allowed / scale)
        if point is None:
            break
        rounds += 1
        candidate = _planned(units, options, point, head)
        with step("verify the plan"):
            planned = run_pipeline(model, parse(candidate.pipeline), (), feeds).model
            cosine = fidelity.cosine(planned)
        loss = 1.0 - cosine
        scale = max(loss / point.loss, 1.0) if point.loss > 0 else (1.0 if loss <= 0 else 2.0)
        if cosine >= budget:
            chosen = candidate
            break
        if point.loss == 0.0:
            break
    return Plan(
        budget,
        objective,
        chosen,
        cosine,
        tuple(_planned(units, options, p, head) for p in points),
        rounds,
        scale,
        sum(u[0].ms for u in options),
        sum(u[0].bytes for u in options),
        costs.measured,
    )


def _options(unit: Unit, sensitivities: Sensitivities, costs: Costs) -> list[Option]:
    """The unit's choices as options, float first."""
    return [
        Option(sensitivities.loss(unit, c), costs.unit_ms(unit, c), sensitivities.bytes(unit, c))
        for c in choices(unit)
    ]


def _planned(
    units: Sequence[Unit], options: Sequence[Sequence[Option]], point: Point, head: str
) -> Planned:
    picked = {unit: choices(unit)[j] for unit, j in zip(units, point.picks, strict=True)}
    return Planned(
        {unit.name: choice for unit, choice in picked.items()},
        pipeline_text(picked, head=head),
        1.0 - point.loss,
        point.ms,
        point.bytes,
    )


__all__ = ["OBJECTIVES", "Plan", "Planned", "model_bytes", "plan"]
