"""Plans prune-sparsify's edits, one `Unit` (layer, FFN or attention block) at a time, in numpy.

A unit's `Edit` holds the new `[k, n]` weight and bias of each of its linears, plus the kept groups
of a structured unit. Weights are masked by score (`prune_patterns`) and, with recovery, each
consumer is refitted to the teacher's outputs (`recovery.refit_masked_paired`) on the Grams of its
input (`compress.grams`); pruned weights stay exactly zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from nlpress.ir import Feeds, Model
from nlpress.ir.blocks import AttentionBlock, FfnPair
from nlpress.ir.linear import Linear
from nlpress.passes.calibration import activations, token_rows
from nlpress.passes.compress.grams import (
    Grams,
    GramSum,
    augmented_weight,
)
from nlpress.passes.prune_patterns import (
    greedy_groups,
    group_rows,
    group_scores,
    kept_groups,
    n_m_mask,
    per_output_mask,
    scores,
)
from nlpress.passes.recovery import paired_output_error, refit_masked_paired

Kind = Literal["weights", "neurons", "heads"]


@dataclass(frozen=True, eq=False)
class Unit:
    """What prune-sparsify prunes as one: a linear's weights, an FFN's neurons, a block's heads."""

    kind: Kind
    structure: Linear | FfnPair | AttentionBlock

    @property
    def name(self) -> str:
        """The consumer linear's node name."""
        return self.consumer.name

    @property
    def consumer(self) -> Linear:
        """The linear whose input is pruned and refitted."""
        if isinstance(self.structure, FfnPair):
            return self.structure.down
        if isinstance(self.structure, AttentionBlock):
            return self.structure.output
        return self.structure

    @property
    def linears(self) -> tuple[Linear, ...]:
        """Every linear the unit rewrites."""
        if isinstance(self.structure, Linear):
            return (self.structure,)
        return self.structure.linears()

    @property
    def groups(self) -> int:
        """Prunable groups now: neurons or heads (input rows for a weights unit)."""
        if isinstance(self.structure, AttentionBlock):
            return self.structure.heads
        return self.consumer.shape[0]


@dataclass
class Statistics:
    """Calibration statistics of the consumers' inputs: augmented Grams, or channel norms only.

    `paired` holds, for sequential recovery, the student/teacher Grams of a consumer input
    (`compress.grams.Grams`); they take precedence over the teacher-only `grams`.
    """

    grams: dict[int, np.ndarray] = field(default_factory=dict)
    norms: dict[int, np.ndarray] = field(default_factory=dict)
    paired: dict[int, Grams] = field(default_factory=dict)

    def gram(self, unit: Unit) -> np.ndarray | None:
        """The augmented Gram `[k+1, k+1]` of the unit's consumer input (the student's)."""
        pair = self.paired.get(id(unit.consumer.activation))
        return pair.student if pair is not None else self.grams.get(id(unit.consumer.activation))

    def pair(self, unit: Unit) -> Grams | None:
        """The student/teacher Grams of the unit's consumer input (equal without `paired`)."""
        pair = self.paired.get(id(unit.consumer.activation))
        if pair is not None:
            return pair
        gram = self.grams.get(id(unit.consumer.activation))
        return None if gram is None else Grams(gram)

    def norm(self, unit: Unit) -> np.ndarray | None:
        """The L2 norm of each input channel of the unit's consumer, if collected."""
        key = id(unit.consumer.activation)
        if key in self.norms and key not in self.paired:
            return self.norms[key]
        gram = self.gram(unit)
        return None if gram is None else np.sqrt(np.maximum(np.diag(gram)[:-1], 0.0))


def collect(model: Model, units: Sequence[Unit], feeds: Sequence[Feeds], full: bool) -> Statistics:
    """One calibration run: Grams of every consumer input (`full`), else only channel norms."""
    tensors = list({id(u.consumer.activation): u.consumer.activation for u in units}.values())
    sums = [GramSum(diagonal=not full) for _ in tensors]
    for values, batch in zip(activations(model, tensors, feeds), feeds, strict=False):
        for total, value in zip(sums, values, strict=True):
            total.add(token_rows(value, batch))
    stats = Statistics()
    for tensor, total in zip(tensors, sums, strict=True):
        if full:
            stats.grams[id(tensor)] = total.total()
        else:
            stats.norms[id(tensor)] = np.sqrt(total.total())
    return stats


@dataclass(frozen=True)
class Settings:
    """How units are planned (the pass's options, resolved)."""

    criterion: Literal["magnitude", "activation", "obs"]
    recover: bool
    damping: float
    n_m: tuple[int, int] | None
    level: float = 0.0


@dataclass(frozen=True, eq=False)
class Edit:
    """A unit's new weights.

    Attributes:
        unit: The unit.
        weights: For each linear of the unit, its new weight `[k, n]` and bias (or None).
        kept: The kept groups of a structured unit (neurons or heads), else None.
        mask: The consumer's kept weights `[k, n]` (its original input width).
        sparsity: The unit's pruned fraction (of weights, or of its original groups).
        error_before: Relative calibration output error of the consumer with pruning alone.
        error_after: The same after the refit (None without recovery).
    """

    unit: Unit
    weights: tuple[tuple[Linear, np.ndarray, np.ndarray | None], ...]
    kept: np.ndarray | None
    mask: np.ndarray
    sparsity: float
    error_before: float | None
    error_after: float | None

    @property
    def error(self) -> float:
        """The error the unit leaves in its layer (after refit where refitted)."""
        value = self.error_after if self.error_after is not None else self.error_before
        return 0.0 if value is None else value


def plan_weights(
    unit: Unit, level: float, stats: Statistics, settings: Settings, mask: np.ndarray | None
) -> Edit | None:
    """Unstructured or N:M pruning of one linear; None if it would prune no nonzero weight."""
    linear = unit.consumer
    weight, bias = linear.weight(), linear.bias_value()
    if mask is None:
        norms = stats.norm(unit) if settings.criterion != "magnitude" else None
        score = scores(weight, norms)
        if settings.n_m is not None:
            mask = n_m_mask(score, *settings.n_m)
        else:
            mask = per_output_mask(score, level)
    if not np.any(weight[~mask]):
        return None
    pruned = np.where(mask, weight, 0.0)
    pair = stats.pair(unit)
    new_weight, new_bias = _refit(pair, weight, bias, mask, settings)
    refitted = new_weight is not None
    new_weight = pruned if new_weight is None else new_weight
    new_bias = bias if new_bias is None else new_bias
    before, after = _errors(pair, weight, bias, pruned, new_weight, new_bias, refitted)
    sparsity = 1.0 - float(np.count_nonzero(mask)) / mask.size
    return Edit(unit, ((linear, new_weight, new_bias),), None, mask, sparsity, before, after)


def plan_groups(
    unit: Unit, level: float, original: int, stats: Statistics, settings: Settings
) -> Edit | None:
    """Remove whole neurons or heads; None if the unit already has at most the target count."""
    keep = max(1, round(original * (1.0 - level)))
    if unit.groups <= keep:
        return None
    consumer = unit.consumer
    weight, bias = consumer.weight(), consumer.bias_value()
    gram = stats.gram(unit)
    use_gram = gram if settings.criterion != "magnitude" else None
    producers = [lin.weight() for lin in unit.linears if lin is not consumer]
    if settings.criterion != "magnitude" and use_gram is None:
        norms = stats.norm(unit)
        use_gram = None if norms is None else np.diag(norms**2)
    pair = stats.pair(unit)
    if settings.criterion == "obs" and pair is not None:
        rhs = None if pair.cross is None else pair.rhs(augmented_weight(weight, bias))
        kept = greedy_groups(pair.student, weight, bias, unit.groups, keep, settings.damping, rhs)
    else:
        score = group_scores(weight, unit.groups, use_gram, producers)
        kept = kept_groups(score, keep)
    size = weight.shape[0] // unit.groups
    rows = group_rows(kept, size)
    mask = np.zeros(weight.shape, dtype=bool)
    mask[rows] = True
    new_weight, new_bias = _refit(pair, weight, bias, mask, settings)
    pruned = np.where(mask, weight, 0.0)
    refitted = new_weight is not None
    final_weight = (pruned if new_weight is None else new_weight)[rows]
    final_bias = bias if new_bias is None else new_bias
    full_weight = pruned if new_weight is None else new_weight
    before, after = _errors(pair, weight, bias, pruned, full_weight, final_bias, refitted)
    weights = [(consumer, final_weight, final_bias)]
    for lin in unit.linears:
        if lin is not consumer:
            columns = group_rows(kept, lin.shape[1] // unit.groups)
            lin_bias = lin.bias_value()
            sliced = None if lin_bias is None else lin_bias[columns]
            weights.append((lin, lin.weight()[:, columns], sliced))
    sparsity = 1.0 - len(kept) / original
    return Edit(unit, tuple(weights), kept, mask, sparsity, before, after)


# The most a unit is pruned under global or sensitivity allocation, relative to the pass's level.


def _refit(
    pair: Grams | None,
    weight: np.ndarray,
    bias: np.ndarray | None,
    mask: np.ndarray,
    settings: Settings,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not settings.recover or pair is None:
        return None, None
    fit_bias = bias is not None
    second, offset = refit_masked_paired(
        pair.student, pair.mixed, weight, bias, mask, settings.damping, fit_bias, pair.shift
    )
    return second, (offset if bias is not None else None)


def _errors(
    pair: Grams | None,
    weight: np.ndarray,
    bias: np.ndarray | None,
    pruned: np.ndarray,
    refitted: np.ndarray,
    new_bias: np.ndarray | None,
    was_refitted: bool,
) -> tuple[float | None, float | None]:
    """The consumer's relative output error pruned as is, and after the refit (if refitted)."""
    if pair is None:
        return None, None
    zero = np.zeros(weight.shape[1])
    before = paired_output_error(pair, pruned, zero if bias is None else bias, weight, bias)
    if not was_refitted:
        return before, None
    offset = zero if new_bias is None else new_bias
    return before, paired_output_error(pair, refitted, offset, weight, bias)


def original_groups(unit: Unit, recorded: Mapping[str, int]) -> int:
    """The unit's group count before any pruning, from the model's record, else its count now."""
    return max(int(recorded.get(unit.name, unit.groups)), unit.groups)
