"""Plans and writes prune-sparsify's edits, one `Unit` (layer, FFN or attention block) at a time.

New weights are computed in numpy, then written into the graph with an undo journal.

A unit's `Edit` holds the new `[k, n]` weight and bias of each of its linears, plus the kept groups
of a structured unit; `apply` swaps in new constants (never mutating old ones), slices per-channel
constants, rewrites the head counts of attention reshapes, and forgets the static shapes of the
tensors whose width changed. Every change is journaled so that the budget search can undo it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Model
from nlpress.ir.blocks import AttentionBlock, FfnPair
from nlpress.ir.graph import constant_value
from nlpress.ir.linear import Linear
from nlpress.ir.progress import steps
from nlpress.passes.calibration import Feeds, activations, token_rows
from nlpress.passes.compress.grams import Grams, GramSum, augmented_weight
from nlpress.passes.prune_patterns import (
    allocate,
    greedy_groups,
    greedy_removals,
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


# --- writing edits into the graph ------------------------------------------------------------

Undo = Callable[[], None]


@dataclass
class Writer:
    """Writes edits into a graph, journaling every change so that `undo` restores the graph."""

    graph: gs.Graph
    journal: list[Undo] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._names = set(self.graph.tensors())

    def apply(self, edits: Iterable[Edit]) -> None:
        """Write every edit."""
        for edit in edits:
            for linear, weight, bias in edit.weights:
                self._write_linear(linear, weight, bias)
            if isinstance(edit.unit.structure, FfnPair) and edit.kept is not None:
                self._slice_ffn(edit.unit.structure, edit.kept)
            if isinstance(edit.unit.structure, AttentionBlock) and edit.kept is not None:
                self._rewrite_heads(edit.unit.structure, len(edit.kept))

    def undo(self) -> None:
        """Restore the graph as it was before the first `apply`."""
        while self.journal:
            self.journal.pop()()

    def _constant(self, base: str, value: np.ndarray) -> gs.Constant:
        name, count = f"{base}.pruned", 0
        while name in self._names:
            count += 1
            name = f"{base}.pruned{count}"
        self._names.add(name)
        return gs.Constant(name, np.ascontiguousarray(value))

    def _set_input(self, node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
        index = next(i for i, t in enumerate(node.inputs) if t is old)
        node.inputs[index] = new
        self.journal.append(lambda: node.inputs.__setitem__(index, old))

    def _forget_shape(self, tensor: gs.Tensor) -> None:
        if isinstance(tensor, gs.Variable) and tensor.shape is not None:
            shape = tensor.shape
            tensor.shape = None
            self.journal.append(lambda: setattr(tensor, "shape", shape))

    def _write_linear(self, linear: Linear, weight: np.ndarray, bias: np.ndarray | None) -> None:
        wm = linear.matmul
        old = wm.weight
        stored = weight.T if wm.transposed else weight
        self._set_input(wm.node, old, self._constant(old.name, stored.astype(old.values.dtype)))
        old_value = linear.bias_value()
        same = bias is not None and old_value is not None and np.array_equal(bias, old_value)
        if bias is not None and linear.bias is not None and not same:
            old_bias = linear.bias
            value = bias.reshape((*old_bias.values.shape[:-1], -1))
            reader = linear.bias_node or wm.node
            new = self._constant(old_bias.name, value.astype(old_bias.values.dtype))
            self._set_input(reader, old_bias, new)
        for node in (wm.node, linear.bias_node):
            if node is not None and linear.shape[1] != weight.shape[1]:
                self._forget_shape(node.outputs[0])

    def _slice_ffn(self, pair: FfnPair, kept: np.ndarray) -> None:
        for node, index in pair.channel_constants:
            old = node.inputs[index]
            value = constant_value(old)
            if value is not None:
                self._set_input(node, old, self._constant(old.name or "channel", value[..., kept]))
        for node in pair.chain:
            for out in node.outputs:
                self._forget_shape(out)

    def _rewrite_heads(self, block: AttentionBlock, heads: int) -> None:
        for split in block.splits:
            self._reshape_dim(split.reshape, -2, heads)
            for node in (*split.between, split.reshape):
                self._forget_shape(node.outputs[0])
        self._reshape_dim(block.merge, -1, heads * block.head_dim)
        self._forget_shape(block.merge.outputs[0])
        for node in block.region:
            for out in node.outputs:
                self._forget_shape(out)

    def _reshape_dim(self, reshape: gs.Node, axis: int, size: int) -> None:
        old = reshape.inputs[1]
        target = constant_value(old)
        if target is None or int(target[axis]) <= 0:
            return
        value = np.array(target, dtype=np.int64)
        value[axis] = size
        self._set_input(reshape, old, self._constant(old.name or "shape", value))


def original_groups(unit: Unit, recorded: Mapping[str, int]) -> int:
    """The unit's group count before any pruning, from the model's record, else its count now."""
    return max(int(recorded.get(unit.name, unit.groups)), unit.groups)
