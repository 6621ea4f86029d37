"""prune-sparsify: W[k,n] -> W * mask (unstructured, N:M) | W[kept rows/columns] (neurons, heads).

Data-aware pruning after training, with a little calibration data, and teacher-guided recovery.

Importance (`criterion`): `magnitude` scores a weight by |W_ij|; `activation` by
|W_ij| * ||x_i||, the calibration L2 norm of its input channel (Wanda). Whole neurons and heads
are scored by the energy they put into the layer that reads them, tr(W_g^T G_gg W_g) with G the
calibration Gram of that layer's input (or the product of the Frobenius norms of the producing
columns and consuming rows under `magnitude`; see `prune_patterns`). `obs` (neurons and heads
with recovery) chooses the groups greedily by what removing them costs after the refit (optimal
brain surgeon on the consumer's damped Gram: cost_g = tr(S_g^T ((H^-1)_gg)^-1 S_g), then S and
H^-1 are updated in closed form); for weight patterns it ranks like `activation`.

Patterns:

- `unstructured`: prune `sparsity` of each layer's weights, ranked within each output column
  (`scope=layer`), or the lowest scores over all layers together (`scope=global`).
- `N:M` (e.g. 2:4): exactly N kept weights in every M consecutive input weights of each output
  (layers whose input width is not a multiple of M are skipped and counted).
- `neurons`: FFN intermediate neurons are removed for real: the columns of the up projection(s)
  and their bias, per-channel constants of the activation chain, and the rows of the down
  projection, so the matrices become smaller dense matrices.
- `heads`: attention heads are removed from the Q/K/V projections (columns and bias), from the
  output projection (rows), and from the Reshape constants that carry the head count.

Structures are found by shape of the graph (`ir.linear`, `ir.blocks`); what is not recognized is
counted in the stats (`ffn_unrecognized`, `attention_unrecognized`) and left alone.

Recovery (`recover`, on by default for neurons and heads): the model the pass receives is the
teacher. Every pruned layer y = x W + b is refitted by ridge regression so that the pruned
layer's outputs match the teacher's on the calibration data (`recovery.py` derives it); this is
layer-wise knowledge distillation in closed form.

Sequential recovery (`sequential`, off by default): units are pruned and refitted one
after another in graph order. Unit l is planned on the activations of the model pruned so far
(the student, with units 1..l-1 already pruned and refitted): x_s is the student's input to the
consumer, x_t the teacher's, and the consumer is fitted to the teacher's outputs x_t W + b:

    [B; c] = (P~^T G_s P~ + Lambda)^-1 P~^T C [W; b],  G_s = sum x~_s^T x~_s,  C = sum x~_s^T x~_t

(x~ = [x, 1]). Each refit thereby also corrects the error that the units before it left in its
input, instead of only its own. With `residual-correction` (on), a consumer whose output is added
to a residual stream r (the block's output projections) is fitted to the teacher's sum instead,
target x~_t [W; b] + (r_t - r_s), so that it also takes out the error the stream carries in
(`recovery.py`: the right-hand side gains D = sum x~_s^T (r_t - r_s)). The statistics come
from one run of the truncated student per stage (units that read the same tensor, e.g. Q/K/V,
form one stage) and one run of the teacher for all stages. With `sequential=false` (the
default) every unit is fitted on the teacher's inputs (x_s = x_t, G_s = C = G), all from one
calibration run: one-shot recovery. On all-MiniLM-L6-v2 (neurons, 25%, OBS) sequential recovery
raised the worst evaluation sentence's cosine to the unpruned model (0.917 against 0.909) but
lowered the mean (0.971 against 0.974; 0.970 without residual correction): refitting on the
student's own inputs also fits calibration-specific error, with about 8k calibration tokens for
1.5k inputs.

For neurons and heads the refitted layer is the consumer (down projection, attention output
projection) and P = selection(kept rows): the kept channels are unchanged in value (the producer
columns and their bias are only sliced; the LayerNorm after the block is not touched), so the
consumer's refit recovers the removed channels' contribution as far as the kept ones can
express it. The OBS criterion runs on the same student Gram, starting from the refit
S0 = H_s^-1 C [W; b] (H_s = G_s + lambda) and removing greedily. For unstructured and N:M masks,
each output column j is refitted on its own kept inputs K_j (P = selection(K_j),
`recovery.refit_masked_paired`), and pruned weights stay exactly zero. The stats give each
consumer's relative calibration output error against the teacher before and after the refit,
E = (tr(S^T G_s S) - 2 tr(S^T C T) + tr(T^T G_t T)) / tr(T^T G_t T).

Allocation (`allocation`, neurons and heads): `uniform` prunes every FFN or block to `sparsity`.
`global` and `sensitivity` prune `sparsity` of all groups together, giving each removal to the
unit whose next one costs least, no unit beyond twice `sparsity`; FFN neurons move in steps of
32 so that widths stay kernel-friendly. Under `global` a unit's costs are its successive OBS
removal costs (or sorted group scores for the other criteria) on the teacher's statistics,
divided by that unit's output energy tr([W; b]^T G [W; b]). Under `sensitivity` they are
measured where it matters: each unit alone is pruned (one-shot, with recovery) to a quarter,
half and all of its cap, the loss 1 - cosine of the model's output to the teacher's is measured
on the calibration data, and the costs are read off that loss curve, made convex through
(0, 0) (3 x units calibration runs of the whole model). On all-MiniLM-L6-v2 (neurons, 25%,
OBS, one-shot) global lowered the mean layer error after the refit (0.0016 against 0.0034) and
still lowered the mean sentence cosine (0.966 against 0.974): a layer's relative output error
is not how much the final embedding suffers. Sensitivity measured the FFNs' losses as nearly
additive (their sum at 25% each, 0.025 on the evaluation text, matches the loss of pruning all
six), but the calibration text ranks them differently from the evaluation text (the last FFN's
loss at 25% is 0.002 on the one and 0.009 on the other), and it gained little (0.975 against
0.974) for about four times the time; `uniform` stays the default.

`budget-cosine`: after pruning, the cosine between the pruned model's first output and the
teacher's is measured on the calibration data (mean-pooled over real tokens when the output is
`[batch, sequence, hidden]` and the feeds have an attention mask, else per flattened row). While
it is below the budget, the unit with the largest remaining layer error has its sparsity halved
(an N:M unit becomes dense) and the model is pruned again.

Idempotence: masks keep the largest scores, so pruning an already-pruned model at the same
sparsity selects the zeros and reports `changed=False`. Structured sparsity is relative to the
original width, which the pass records in the model's metadata (`nlpress.prune-sparsify.widths`,
by consumer node name); a second run at the same sparsity finds the target already met.

Lowering: neurons and heads need none (smaller dense MatMuls). Unstructured and N:M weights stay
zeros inside dense tensors, and the artifact runs them with the dense kernels: TVM 0.27 (the
pinned apache-tvm 0.27.0.post1) has no sparse matmul to lower them to. Its Relax has no sparse
tensor type and no sparse op (the PyTorch frontend converts sparse tensors to dense, "Relax does
not support sparse tensors yet"); TOPI keeps only `sparse_to_dense` and `sparse_reshape` (index
manipulation, no `sparse_dense`/`csrmm`, which older Relay-era TOPI had); the only sparse-related
global function registered is `topi.sparse_to_dense`; the wheel carries no cuSPARSE/MKL offload.
Dense with zeros is therefore both what is stored and the fastest thing TVM can run here;
`nlpress inspect` reports the sparsity per layer (with the N:M pattern it satisfies) either way.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import ClassVar, Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from nlpress.ir import Model
from nlpress.ir.blocks import activation_nodes, attention_blocks, ffn_pairs
from nlpress.ir.linear import Linear, linears, residual
from nlpress.ir.progress import steps
from nlpress.ir.verify import infer_shapes
from nlpress.passes.base import Pass, PassResult, PreconditionError
from nlpress.passes.calibration import Feeds, require_feeds
from nlpress.passes.compress.distillation import (
    check_distill_options,
    distill_epochs_option,
    distill_lr_option,
    distill_stage,
    require_distill,
)
from nlpress.passes.compress.grams import TeacherRows, paired_grams, teacher_rows
from nlpress.passes.compress.sensitivity import Fidelity
from nlpress.passes.prune_edits import (
    Edit,
    Settings,
    Statistics,
    Unit,
    Writer,
    allocate_levels,
    collect,
    obs_cost_curve,
    original_groups,
    plan_groups,
    plan_weights,
)
from nlpress.passes.prune_patterns import global_masks, interpolated_costs, scores
from nlpress.passes.recovery import DEFAULT_DAMPING

LOG = logging.getLogger(__name__)
WIDTHS_KEY = "nlpress.prune-sparsify.widths"
_STRUCTURED = ("neurons", "heads")
_DEFAULT_SPARSITY = {"unstructured": 0.5, "neurons": 0.25, "heads": 0.25}
_N_M = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class PruneSparsify(Pass):
    """Prune weights, FFN neurons or attention heads by importance, with teacher-guided recovery.

    Options:
        pattern: `unstructured`, `N:M` (e.g. `2:4`: N kept in every M consecutive input
            weights), `neurons` (FFN intermediate neurons, removed for real) or `heads`
            (attention heads, removed for real).
        sparsity: The fraction to prune: of each layer's weights (unstructured), or of each
            FFN's neurons or each block's heads, relative to the original width. Default 0.5
            for unstructured, 0.25 for neurons and heads; N:M fixes it, so leave it out there.
        criterion: `magnitude` (|W|), `activation` (|W| times the calibration norm of each
            input channel, as Wanda; for neurons and heads, the group's calibration output
            energy) or `obs` (neurons and heads: the groups whose removal the refit compensates
            best, chosen greedily; weights: as `activation`).
        scope: `layer` (every layer pruned to `sparsity`, ranked within each output) or
            `global` (one threshold over all layers; unstructured only).
        recover: Refit each pruned layer to the unpruned model's outputs on the calibration
            data (closed-form ridge regression). Default: on for neurons and heads, off for
            unstructured and N:M.
        damping: The refit's ridge, relative to the mean input energy.
        exclude: Comma-separated glob patterns; a layer is skipped when the name of one of its
            MatMul/Gemm nodes or weights matches one.
        budget-cosine: A least cosine between the pruned and the unpruned model's first output
            on the calibration data; the most damaged layers are pruned less until it is met.
        sequential: With recovery, prune and refit the units one after another in graph order,
            each refitted on the pruned model's own inputs to the teacher's outputs (corrects
            the error of the units before it). Off by default: on all-MiniLM-L6-v2 it raised
            the worst sentence's cosine but lowered the mean (benchmarks/prune.py).
        residual-correction: In sequential recovery, a layer whose output is added to a
            residual stream is fitted so that the student's sum matches the teacher's, also
            taking out the error that the stream carries in.
        allocation: `uniform` (every FFN or block pruned to `sparsity`), `global` (neurons
            and heads: `sparsity` of all groups together, the cheapest removals first by
            normalized layer cost, no unit pruned beyond twice `sparsity`) or `sensitivity`
            (the same, by the output loss measured with each unit pruned alone at three
            levels). On all-MiniLM-L6-v2 (neurons at 25% with OBS) the mean cosine was 0.966
            with global, 0.975 with sensitivity and 0.974 with uniform.
    """

    name: ClassVar[str] = "prune-sparsify"
    tolerance: ClassVar[float | None] = None
    needs_calibration: ClassVar[bool] = True

    pattern: str = "unstructured"
    sparsity: float | None = None
    criterion: Literal["magnitude", "activation", "obs"] = "activation"
    scope: Literal["layer", "global"] = "layer"
    recover: bool | None = None
    damping: float = DEFAULT_DAMPING
    exclude: tuple[str, ...] = field(default_factory=tuple)
    budget_cosine: float | None = None
    sequential: bool = False
    residual_correction: bool = True
    allocation: Literal["uniform", "global", "sensitivity"] = "uniform"
    distill_epochs: int = distill_epochs_option()
    distill_lr: float = distill_lr_option()

    def __post_init__(self) -> None:
        check_distill_options(self.distill_epochs, self.distill_lr)
        n_m = _N_M.match(self.pattern)
        if self.pattern not in _DEFAULT_SPARSITY and not n_m:
            raise ValueError(
                f"pattern {self.pattern!r}: expected unstructured, neurons, heads or N:M (2:4)"
            )
        if n_m and not 0 < int(n_m.group(1)) < int(n_m.group(2)):
            raise ValueError(f"pattern {self.pattern}: N:M needs 0 < N < M")
        if n_m and self.sparsity is not None:
            raise ValueError(f"pattern {self.pattern} fixes the sparsity; leave sparsity out")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity {self.sparsity}: expected 0 <= sparsity < 1")
        if self.scope == "global" and self.pattern != "unstructured":
            raise ValueError("scope=global works with pattern=unstructured only")
        if self.allocation != "uniform" and self.pattern not in _STRUCTURED:
            raise ValueError(
                f"allocation={self.allocation} works with pattern=neurons or heads (use "
                "scope=global for unstructured weights)"
            )
        if self.damping < 0:
            raise ValueError(f"damping {self.damping}: expected >= 0")
        if self.budget_cosine is not None and not 0.0 < self.budget_cosine <= 1.0:
            raise ValueError(f"budget-cosine {self.budget_cosine}: expected 0 < budget <= 1")

    @property
    def level(self) -> float:
        """The sparsity to prune to (a pattern's default when none was given)."""
        if self.n_m is not None:
            n, m = self.n_m
            return 1.0 - n / m
        return _DEFAULT_SPARSITY[self.pattern] if self.sparsity is None else self.sparsity

    @property
    def n_m(self) -> tuple[int, int] | None:
        """(N, M) for an N:M pattern, else None."""
        match = _N_M.match(self.pattern)
        return (int(match.group(1)), int(match.group(2))) if match else None

    @property
    def recovering(self) -> bool:
        """Whether pruned layers are refitted."""
        return self.pattern in _STRUCTURED if self.recover is None else self.recover

    @property
    def sequentially(self) -> bool:
        """Whether units are refitted one after another on the pruned model's inputs."""
        return self.recovering and self.sequential

    @property
    def _teacher_stats(self) -> bool:
        """Whether statistics of the unpruned model are used (sequential planning has its own)."""
        return not self.sequentially or self.allocation != "uniform" or self.scope == "global"

    @property
    def needs_data(self) -> bool:
        """Whether this configuration reads calibration data."""
        measured = self.budget_cosine is not None or self.allocation == "sensitivity"
        trained = self.distill_epochs > 0
        return self.criterion != "magnitude" or self.recovering or measured or trained

    def check_order(self, earlier: Sequence[Pass]) -> None:
        """Pruning reads float weights: it must come before quantization."""
        for p in earlier:
            if p.name.startswith("quantize"):
                raise PreconditionError(
                    f"{self.name} must run before {p.name}: it prunes float weights, which "
                    f"{p.name} has moved behind quantize/dequantize nodes"
                )

    def requires(self, model: Model) -> None:
        """The pattern must find something to prune, and data must be there when needed."""
        self._units(_working(model, self.pattern == "heads"))
        if self.needs_data:
            require_feeds(model, self.name)
        require_distill(self.name, self.distill_epochs)

    def run(self, model: Model) -> PassResult:
        """Prune a copy of `model` (the teacher)."""
        work = _working(model, self.pattern == "heads")
        units, found = self._units(work)
        before = _size_stats(work.graph)
        if not units:
            return PassResult(model.copy(), False, {**found, **_suffix(before, "before")})
        feeds = require_feeds(model, self.name) if self.needs_data else ()
        full = self.recovering or self.budget_cosine is not None
        stats = collect(work, units, feeds, full) if feeds and self._teacher_stats else Statistics()
        recorded = _recorded_widths(model)
        writer = Writer(work.graph)
        planner = _Planner(self, units, stats, recorded, model, work, feeds)
        levels = planner.levels(writer)
        edits = planner.write(levels, writer)
        budget: dict[str, float] = {}
        if self.budget_cosine is not None:
            edits, budget = _meet_budget(self.budget_cosine, writer, planner, levels, edits)
        if not edits:
            writer.undo()
            return PassResult(model.copy(), False, {**found, **_suffix(before, "before")})
        out = _finish(work, edits, recorded)
        after = _size_stats(out.graph)
        summary = {
            **found,
            **_suffix(before, "before"),
            **_suffix(after, "after"),
            **_edit_stats(edits),
            **budget,
        }
        out, trained = distill_stage(out, model, feeds, self.distill_epochs, self.distill_lr)
        return PassResult(out, True, {**summary, **trained})

    def _units(self, model: Model) -> tuple[list[Unit], dict[str, float]]:
        graph = model.graph
        layers = prunable_linears(graph)
        if self.pattern == "neurons":
            units, found = _ffn_units(graph, layers)
        elif self.pattern == "heads":
            units, found = _head_units(graph, layers)
        else:
            units, found = self._weight_units(layers)
        kept = [u for u in units if not self._excluded(u)]
        found["units_excluded"] = len(units) - len(kept)
        found["units"] = len(kept)
        return kept, found

    def _weight_units(self, layers: list[Linear]) -> tuple[list[Unit], dict[str, float]]:
        if not layers:
            raise PreconditionError(
                f"{self.name}: the graph has no MatMul/Gemm with a constant 2-D float weight"
            )
        units, shared, indivisible = [], 0, 0
        for lin in layers:
            if len(lin.matmul.weight.outputs) > 1:
                shared += 1
            elif self.n_m is not None and lin.shape[0] % self.n_m[1]:
                indivisible += 1
            else:
                units.append(Unit("weights", lin))
        found: dict[str, float] = {"layers_found": len(layers), "skipped_shared_weight": shared}
        if self.n_m is not None:
            found["skipped_not_multiple_of_m"] = indivisible
        return units, found

    def _excluded(self, unit: Unit) -> bool:
        names = [n for lin in unit.linears for n in (lin.name, lin.matmul.weight.name)]
        return any(fnmatch.fnmatchcase(n, p) for n in names for p in self.exclude)


@dataclass
class _Planner:
    """Plans and writes edits for given per-unit sparsity levels, caching what it planned.

    Without sequential recovery a unit's edit depends on its own level only. With it, a unit is
    planned on the statistics of the model pruned so far, so its edit depends on the levels of
    every unit up to it: the cache key is that prefix of levels.
    """

    options: PruneSparsify
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

        The loss is 1 - the pooled cosine between the model's first output and the teacher's
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
        """The pooled cosine between the rewritten model's first output and the teacher's."""
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


def prunable_linears(graph: gs.Graph) -> list[Linear]:
    """The linears prune-sparsify rewrites: a Gemm only with alpha = beta = 1 and an [n] bias."""
    return [lin for lin in linears(graph) if _unscaled(lin)]


def _unscaled(linear: Linear) -> bool:
    if linear.node.op != "Gemm":
        return True
    if linear.alpha != 1.0 or linear.beta != 1.0:
        return False
    return linear.bias is None or np.asarray(linear.bias.values).size == linear.shape[1]


def _stages(units: Sequence[Unit]) -> list[list[Unit]]:
    """Consecutive units that read the same consumer input (pruning one leaves the others' be)."""
    stages: list[list[Unit]] = []
    for unit in units:
        if stages and stages[-1][0].consumer.activation is unit.consumer.activation:
            stages[-1].append(unit)
        else:
            stages.append([unit])
    return stages


def _working(model: Model, with_shapes: bool) -> Model:
    """A copy to analyse and rewrite; shape-inferred for heads (side inputs need shapes)."""
    work = model.copy()
    if with_shapes:
        try:
            work = replace(infer_shapes(model), calibration=model.calibration)
        except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
            work = model.copy()
    work.graph.toposort()
    return work


def _ffn_units(graph: gs.Graph, layers: list[Linear]) -> tuple[list[Unit], dict[str, float]]:
    pairs = ffn_pairs(graph, layers)
    if not pairs:
        raise PreconditionError(
            "pattern=neurons found no FFN it recognizes (MatMul(+bias) -> elementwise "
            "activation -> MatMul(+bias), the intermediate read only by that chain); "
            "run fold first, or use pattern=unstructured"
        )
    covered = {id(n) for p in pairs for n in p.chain}
    unrecognized = sum(id(n) not in covered for n in activation_nodes(graph))
    found: dict[str, float] = {"ffn_pairs_found": len(pairs), "ffn_unrecognized": unrecognized}
    return [Unit("neurons", p) for p in pairs], found


def _head_units(graph: gs.Graph, layers: list[Linear]) -> tuple[list[Unit], dict[str, float]]:
    blocks = attention_blocks(graph, layers)
    if not blocks:
        raise PreconditionError(
            "pattern=heads found no attention it recognizes (Q/K/V projections -> Reshape "
            "[.., heads, head_dim] -> Transpose -> MatMul/Softmax -> ... -> Reshape back -> "
            "output projection); run fold first (static shapes help), or use pattern=neurons"
        )
    covered = {id(n) for b in blocks for n in b.region}
    softmaxes = [n for n in graph.nodes if n.op in ("Softmax", "LogSoftmax")]
    found: dict[str, float] = {
        "attention_blocks_found": len(blocks),
        "attention_unrecognized": sum(id(n) not in covered for n in softmaxes),
    }
    return [Unit("heads", b) for b in blocks], found


def _recorded_widths(model: Model) -> dict[str, int]:
    try:
        value = json.loads(model.metadata.get(WIDTHS_KEY, "{}"))
    except json.JSONDecodeError:
        return {}
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _finish(work: Model, edits: Sequence[Edit], recorded: Mapping[str, int]) -> Model:
    """The rewritten model: dead constants dropped, structured widths recorded in metadata."""
    work.graph.toposort()
    structured = [e for e in edits if e.kept is not None]
    if not structured:
        return work
    widths = dict(recorded)
    for edit in structured:
        widths[edit.unit.name] = original_groups(edit.unit, recorded)
    metadata = {**work.metadata, WIDTHS_KEY: json.dumps(widths, sort_keys=True)}
    return replace(work, metadata=metadata)


def _size_stats(graph: gs.Graph) -> dict[str, float]:
    params = nonzero = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.values.dtype.kind == "f":
            params += tensor.values.size
            nonzero += int(np.count_nonzero(tensor.values))
    dense = sparse = 0
    for lin in prunable_linears(graph):
        k, n = lin.shape
        dense += 2 * k * n
        sparse += 2 * int(np.count_nonzero(lin.matmul.weight.values))
    return {
        "params": float(params),
        "nonzero_params": float(nonzero),
        "matmul_flops_per_token": float(dense),
        "nonzero_matmul_flops_per_token": float(sparse),
    }


def _suffix(values: Mapping[str, float], suffix: str) -> dict[str, float]:
    return {f"{key}_{suffix}": value for key, value in values.items()}


def _edit_stats(edits: Sequence[Edit]) -> dict[str, float]:
    stats: dict[str, float] = {"units_pruned": float(len(edits))}
    before = [e.error_before for e in edits if e.error_before is not None]
    after = [e.error_after for e in edits if e.error_after is not None]
    if before:
        stats["recovery_error_before"] = float(np.mean(before))
    if after:
        stats["recovery_error_after"] = float(np.mean(after))
    for edit in edits:
        stats[f"sparsity:{edit.unit.name}"] = edit.sparsity
        if edit.error_before is not None:
            stats[f"recovery_error_before:{edit.unit.name}"] = edit.error_before
        if edit.error_after is not None:
            stats[f"recovery_error_after:{edit.unit.name}"] = edit.error_after
    return stats


# --- the cosine budget -----------------------------------------------------------------------


def _meet_budget(
    budget: float,
    writer: Writer,
    planner: _Planner,
    levels: dict[str, float],
    edits: list[Edit],
) -> tuple[list[Edit], dict[str, float]]:
    """Halve the sparsity of the most damaged unit until the output cosine meets the budget."""
    first = cosine = planner.output_cosine()
    relaxed = 0
    while cosine < budget and edits:
        worst = max(edits, key=lambda e: e.error).unit.name
        levels[worst] = _relaxed(levels[worst], planner.options.n_m is not None)
        relaxed += 1
        edits = planner.write(levels, writer)
        cosine = planner.output_cosine() if edits else 1.0
    stats = {
        "budget_cosine_first": first,
        "budget_cosine": cosine,
        "budget_met": float(cosine >= budget),
        "budget_relaxations": float(relaxed),
    }
    return edits, stats


def _relaxed(level: float, n_m: bool) -> float:
    half = level / 2
    return 0.0 if n_m or half < 0.01 else half
