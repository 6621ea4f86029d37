"""Plans and writes per-unit levels, one-shot or sequentially, and meets the cosine budget.

One-shot, every unit is planned on the teacher's statistics. Sequentially, units are planned
stage by stage in graph order on the paired Grams of the model pruned so far
(`compress.grams.paired_grams`). The budget halves the sparsity of the unit with the largest
remaining layer error (an N:M unit becomes dense) until the output cosine meets it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.ir.linear import residual
from nlpress.ir.progress import steps
from nlpress.passes.compress.budget import Ladder, meet_budget
from nlpress.passes.compress.grams import (
    TeacherRows,
    paired_grams,
    teacher_rows,
)
from nlpress.passes.compress.sensitivity import Fidelity
from nlpress.passes.prune_patterns import (
    global_masks,
    interpolated_costs,
    scores,
)
from nlpress.passes.prune_sparsify.allocation import allocate_levels, obs_cost_curve
from nlpress.passes.prune_sparsify.edits import (
    Edit,
    Settings,
    Statistics,
    Unit,
    original_groups,
    plan_groups,
    plan_weights,
)
from nlpress.passes.prune_sparsify.writer import Writer

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanOptions:
    """The pass's options as the planner reads them, resolved.

    Attributes:
        criterion: magnitude, activation or obs.
        scope: layer or global (one threshold over all layers).
        allocation: uniform, global or sensitivity.
        level: The sparsity to prune to.
        n_m: (N, M) of an N:M pattern, else None.
        recovering: Whether pruned layers are refitted.
        sequentially: Whether units are refitted in order on the pruned model's inputs.
        residual_correction: Whether a layer feeding a residual stream fits the teacher's sum.
        damping: The refit's ridge.
    """

    criterion: Literal["magnitude", "activation", "obs"]
    scope: str
    allocation: str
    level: float
    n_m: tuple[int, int] | None
    recovering: bool
    sequentially: bool
    residual_correction: bool
    damping: float


@dataclass
class Planner:
    """Plans and writes edits for given per-unit sparsity levels, caching what it planned.

    Without sequential recovery a unit's edit depends on its own level only. With it, a unit is
    planned on the statistics of the model pruned so far, so its edit depends on the levels of
    every unit up to it: the cache key is that prefix of levels.
    """

    options: PlanOptions
    units: list[Unit]
    stats: Statistics
    recorded: Mapping[str, int]
    teacher: Model
    work: Model
    feeds: Sequence[Feeds]
    cache: dict[tuple[object, ...], Edit | None] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    teacher_rows: TeacherRows | None = None
    fidelity: Fidelity | None = None

    def __post_init__(self) -> None:
        opts = self.options
        if opts.scope == "global":
            criterion = opts.criterion != "magnitude"
            layer_scores = [
                scores(u.consumer.weight(), self.stats.norm(u) if criterion else None)
                for u in self.units
            ]
            masks = global_masks(layer_scores, opts.level)
            self.masks = {u.name: m for u, m in zip(self.units, masks, strict=True)}

    def levels(self, writer: Writer) -> dict[str, float]:
        """Each unit's starting level: the pass's level, or the global or measured allocation's."""
        opts = self.options
        if opts.allocation == "global":
            curve = obs_cost_curve(self.stats, self.settings)
            return allocate_levels(self.units, self.recorded, opts.level, curve)
        if opts.allocation == "sensitivity":
            curve = partial(self._measured_costs, writer)
            levels = allocate_levels(self.units, self.recorded, opts.level, curve)
            writer.undo()
            return levels
        return {unit.name: opts.level for unit in self.units}

    def _measured_costs(self, writer: Writer, unit: Unit, limit: int, step: int) -> np.ndarray:
        """The unit's removal costs, from the output loss with it alone pruned at three levels.

        The loss is 1 - the pooled cosine between the model's embedding output and the teacher's
        on the calibration data, measured with a quarter, half and all of `limit` removed
        (one-shot plans, rounded down to `step`), and interpolated (`interpolated_costs`).
        """
        original = original_groups(unit, self.recorded)
        removals = sorted({limit * part // 4 // step * step for part in (1, 2, 4)} - {0})
        losses = []
        for count in removals:
            level = 1.0 - (unit.groups - count) / original
            levels = {u.name: level if u is unit else 0.0 for u in self.units}
            writer.undo()
            writer.apply(self.plan(levels))
            losses.append(self._fidelity().loss(self.work))
            LOG.debug("sensitivity of %s at %.3f: loss %.5f", unit.name, level, losses[-1])
        return interpolated_costs(removals, losses)

    def output_cosine(self) -> float:
        """The pooled cosine between the rewritten model's embedding output and the teacher's."""
        return self._fidelity().cosine(self.work)

    def _fidelity(self) -> Fidelity:
        if self.fidelity is None:
            self.fidelity = Fidelity(self.teacher, self.feeds)
        return self.fidelity

    @property
    def settings(self) -> Settings:
        """The options as planning settings."""
        opts = self.options
        return Settings(opts.criterion, opts.recovering, opts.damping, opts.n_m, opts.level)

    def write(self, levels: Mapping[str, float], writer: Writer) -> list[Edit]:
        """Undo what `writer` wrote, then write every unit at its level; the edits written."""
        writer.undo()
        if not self.options.sequentially or not self.feeds:
            direct = self.plan(levels)
            writer.apply(direct)
            return direct
        edits: list[Edit] = []
        prefix: tuple[float, ...] = ()
        stages = _stages(self.units)
        for number, stage in enumerate(steps(stages, "stages fitted in order"), 1):
            prefix = prefix + tuple(levels[u.name] for u in stage)
            todo = [u for u in stage if (u.name, prefix) not in self.cache]
            LOG.debug("sequential stage %d/%d: %d unit(s) to plan", number, len(stages), len(todo))
            stats = self._paired_stats([u for u in todo if levels[u.name] > 0.0])
            for unit in todo:
                self.cache[(unit.name, prefix)] = self._plan(unit, levels[unit.name], stats)
            planned = [self.cache[(u.name, prefix)] for u in stage]
            stage_edits = [e for e in planned if e is not None]
            writer.apply(stage_edits)
            edits += stage_edits
        return edits

    def plan(self, levels: Mapping[str, float]) -> list[Edit]:
        """The edits of every unit at its level on the teacher's statistics."""
        edits = []
        for unit in self.units:
            key = (unit.name, levels[unit.name])
            if key not in self.cache:
                self.cache[key] = self._plan(unit, levels[unit.name], self.stats)
            edit = self.cache[key]
            if edit is not None:
                edits.append(edit)
        return edits

    def _paired_stats(self, units: Sequence[Unit]) -> Statistics:
        tensors = list({id(u.consumer.activation): u.consumer.activation for u in units}.values())
        if not tensors:
            return Statistics()
        names = [str(t.name) for t in tensors]
        streams = [self._residual(t) for t in tensors]
        if self.teacher_rows is None:  # every consumer input and stream of the teacher, at once
            every = dict.fromkeys(str(u.consumer.activation.name) for u in self.units)
            every.update(dict.fromkeys(r for u in self.units if (r := self._residual_of(u))))
            self.teacher_rows = teacher_rows(self.teacher, list(every), self.feeds)
        grams = paired_grams(self.work, self.teacher_rows, names, self.feeds, streams)
        return Statistics(paired={id(t): g for t, g in zip(tensors, grams, strict=True)})

    def _residual_of(self, unit: Unit) -> str | None:
        """The residual stream's name for a unit whose consumer feeds one (with correction)."""
        if not self.options.residual_correction or len(self._readers(unit)) != 1:
            return None
        stream = residual(self.work.graph, unit.consumer)
        return None if stream is None else str(stream.name)

    def _residual(self, tensor: gs.Tensor) -> str | None:
        users = [u for u in self.units if u.consumer.activation is tensor]
        return self._residual_of(users[0]) if len(users) == 1 else None

    def _readers(self, unit: Unit) -> list[Unit]:
        return [u for u in self.units if u.consumer.activation is unit.consumer.activation]

    def _plan(self, unit: Unit, level: float, stats: Statistics) -> Edit | None:
        if level <= 0.0:
            return None
        opts = self.options
        if unit.kind == "weights":
            mask = self.masks.get(unit.name) if level == opts.level else None
            return plan_weights(unit, level, stats, self.settings, mask)
        original = original_groups(unit, self.recorded)
        return plan_groups(unit, level, original, stats, self.settings)


def _stages(units: Sequence[Unit]) -> list[list[Unit]]:
    """Consecutive units that read the same consumer input (pruning one leaves the others' be)."""
    stages: list[list[Unit]] = []
    for unit in units:
        if stages and stages[-1][0].consumer.activation is unit.consumer.activation:
            stages[-1].append(unit)
        else:
            stages.append([unit])
    return stages


# --- the cosine budget -----------------------------------------------------------------------


def meet_cosine(
    budget: float, writer: Writer, planner: Planner, levels: dict[str, float], edits: list[Edit]
) -> tuple[list[Edit], dict[str, float]]:
    """Relax the pruning one unit at a time until the output cosine meets `budget`; the edits."""
    ladder = Relaxations(planner, writer, [(levels, edits)])
    met = meet_budget(budget, Ladder(ladder.cosine, ladder.top()))
    return ladder.show(met.step), met.stats()


@dataclass
class Relaxations:
    """The ladder of pruning states: each step halves the sparsity of the most damaged unit.

    The most damaged unit is the one whose edit has the largest layer error; an N:M unit (or one
    under 1%) becomes dense. Steps are built in order, each from the edits of the one before.
    """

    planner: Planner
    writer: Writer
    states: list[tuple[dict[str, float], list[Edit]]]
    current: int = 0

    def cosine(self, step: int) -> float:
        """The output cosine with the pruning relaxed `step` times (1 once nothing is pruned)."""
        return self.planner.output_cosine() if self.show(step) else 1.0

    def show(self, step: int) -> list[Edit]:
        """Write the state `step` into the graph; its edits."""
        while len(self.states) <= step:
            levels, edits = self.states[-1]
            if edits:
                worst = max(edits, key=lambda e: e.error).unit.name
                levels = {**levels, worst: self._relaxed(levels[worst])}
            self.states.append((levels, self.planner.write(levels, self.writer)))
            self.current = len(self.states) - 1
        if step != self.current:
            self.planner.write(self.states[step][0], self.writer)
            self.current = step
        return self.states[step][1]

    def top(self) -> int:
        """The most relaxations there can be before nothing is pruned."""
        count = 0
        for level in self.states[0][0].values():
            while level > 0.0:
                level, count = self._relaxed(level), count + 1
        return count

    def _relaxed(self, level: float) -> float:
        half = level / 2
        return 0.0 if self.planner.options.n_m is not None or half < 0.01 else half
