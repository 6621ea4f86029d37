"""prune-sparsify: W[k,n] -> W * mask (unstructured, N:M) | W[kept rows/columns] (neurons, heads).

Data-aware pruning after training, with a little calibration data, and teacher-guided recovery.
The run reads as its steps:

1. units (`units`): every linear's weights (unstructured, N:M), every FFN's neurons or every
   attention block's heads, found by shape of the graph (`ir.linear`, `ir.blocks`); what is not
   recognized is counted (`ffn_unrecognized`, `attention_unrecognized`) and left alone;
2. statistics: the augmented Gram of each consumer's input from one run of the teacher, or
   channel norms only (`edits.collect`);
3. levels: `sparsity` for every unit, or one budget of removals allocated over cost curves
   (`allocation`);
4. edits (`edits`, `planner`), written with an undo journal (`writer`), relaxed until the
   cosine budget is met;
5. optionally distillation (`compress.distillation`).

Importance (`criterion`): `magnitude` scores a weight by |W_ij|; `activation` by |W_ij| ||x_i||,
the calibration L2 norm of its input channel (Wanda). Whole neurons and heads are scored by the
energy they put into the layer that reads them, tr(W_g^T G_gg W_g) with G the calibration Gram of
that layer's input. `obs` chooses groups greedily by what removing them costs after the refit
(optimal brain surgeon on the consumer's damped Gram: cost_g = tr(S_g^T ((H^-1)_gg)^-1 S_g)).

Recovery: every pruned layer y = x W + b is refitted by ridge regression so that its outputs
match the teacher's on the calibration data, [B; c] = (P~^T G_s P~ + Lambda)^-1 P~^T C [W; b]
with P the kept inputs, G_s = sum x~_s^T x~_s and C = sum x~_s^T x~_t (`recovery.py`). One-shot,
x_s = x_t; sequentially, units are refitted in graph order on the pruned model's own inputs, and
with `residual-correction` a consumer that feeds a residual stream r is fitted to the teacher's
sum, target x~_t [W; b] + (r_t - r_s).

Idempotence: masks keep the largest scores, so pruning an already-pruned model at the same
sparsity selects the zeros and reports `changed=False`; structured widths are relative to the
original width recorded in the model's metadata.

Lowering: neurons and heads need none (smaller dense MatMuls). Unstructured and N:M weights stay
zeros inside dense tensors, run by the dense kernels: TVM's Relax has no sparse tensor type or
sparse matmul to lower them to. `nlpress inspect` reports the sparsity per layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.ir.linear import Linear
from nlpress.passes.base import Pass, PassResult, PreconditionError
from nlpress.passes.calibration import require_feeds
from nlpress.passes.compress.distillation import (
    check_distill_options,
    distill_epochs_option,
    distill_lr_option,
    distill_stage,
    require_distill,
)
from nlpress.passes.compress.options import (
    budget_cosine_option,
    check_budget_cosine,
    check_exclude,
    check_include,
    exclude_option,
    include_option,
    selected,
)
from nlpress.passes.prune_sparsify.edits import Statistics, Unit, collect
from nlpress.passes.prune_sparsify.planner import Planner, PlanOptions, meet_cosine
from nlpress.passes.prune_sparsify.stats import edit_stats, size_stats, suffixed
from nlpress.passes.prune_sparsify.units import (
    WIDTHS_KEY,
    ffn_units,
    finish,
    head_units,
    prunable_linears,
    recorded_widths,
    working_copy,
)
from nlpress.passes.prune_sparsify.writer import Writer
from nlpress.passes.recovery import DEFAULT_DAMPING

__all__ = ["WIDTHS_KEY", "PruneSparsify"]

_STRUCTURED = ("neurons", "heads")
_DEFAULT_SPARSITY = {"unstructured": 0.5, "neurons": 0.25, "heads": 0.25}
_N_M = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class PruneSparsify(Pass):
    """Prune weights, FFN neurons or attention heads by importance, with teacher-guided recovery.

    Options:
        pattern: `unstructured`, `N:M` (e.g. `2:4`: N kept in every M consecutive input
            weights), `neurons` (FFN neurons, removed for real) or `heads` (attention heads).
        sparsity: The fraction to prune, of each layer's weights or of each FFN's neurons or
            block's heads (default 0.5 unstructured, 0.25 neurons and heads; N:M fixes it).
        criterion: `magnitude` (|W|), `activation` (|W| times the input's calibration norm;
            groups: output energy) or `obs` (groups the refit compensates best).
        scope: `layer` (every layer pruned to `sparsity`) or `global` (one threshold over all
            layers; unstructured only).
        recover: Refit each pruned layer to the unpruned model's outputs on calibration data
            (default: on for neurons and heads, off for unstructured and N:M).
        damping: The refit's ridge, relative to the mean input energy.
        sequential: With recovery, prune and refit the units in graph order, each on the
            pruned model's own inputs to the teacher's outputs.
        residual-correction: In sequential recovery, fit a layer that feeds a residual stream
            to the teacher's sum, taking out the error the stream carries in.
        allocation: `uniform` (every FFN or block to `sparsity`), `global` (all groups
            together, cheapest relative cost first) or `sensitivity` (by measured output loss).
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
    include: tuple[str, ...] = include_option()
    exclude: tuple[str, ...] = exclude_option()
    budget_cosine: float | None = budget_cosine_option()
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
        check_budget_cosine(self.budget_cosine)
        check_include(self.include)
        check_exclude(self.name, self.exclude)

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
    def plan_options(self) -> PlanOptions:
        """The options the planner reads."""
        return PlanOptions(
            self.criterion,
            self.scope,
            self.allocation,
            self.level,
            self.n_m,
            self.recovering,
            self.sequentially,
            self.residual_correction,
            self.damping,
        )

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
        """The pattern must find something to prune."""
        self._units(working_copy(model, self.pattern == "heads"))
        require_distill(self.name, self.distill_epochs)

    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        """Prune a copy of `model` (the teacher)."""
        feeds = require_feeds(data, self.name) if self.needs_data else ()
        work = working_copy(model, self.pattern == "heads")
        units, found = self._units(work)
        before = size_stats(work.graph)
        if not units:
            return PassResult(model.copy(), False, {**found, **suffixed(before, "before")})
        full = self.recovering or self.budget_cosine is not None
        stats = collect(work, units, feeds, full) if feeds and self._teacher_stats else Statistics()
        recorded = recorded_widths(model)
        writer = Writer(work.graph)
        planner = Planner(self.plan_options, units, stats, recorded, model, work, feeds)
        levels = planner.levels(writer)
        edits = planner.write(levels, writer)
        budget: dict[str, float] = {}
        if self.budget_cosine is not None:
            edits, budget = meet_cosine(self.budget_cosine, writer, planner, levels, edits)
        if not edits:
            writer.undo()
            return PassResult(model.copy(), False, {**found, **suffixed(before, "before")})
        out = finish(work, edits, recorded)
        after = size_stats(out.graph)
        summary = {
            **found,
            **suffixed(before, "before"),
            **suffixed(after, "after"),
            **edit_stats(edits),
            **budget,
        }
        out, trained = distill_stage(out, model, feeds, self.distill_epochs, self.distill_lr)
        return PassResult(out, True, {**summary, **trained})

    def _units(self, model: Model) -> tuple[list[Unit], dict[str, float]]:
        graph = model.graph
        layers = prunable_linears(graph)
        if self.pattern == "neurons":
            units, found = ffn_units(graph, layers)
        elif self.pattern == "heads":
            units, found = head_units(graph, layers)
        else:
            units, found = self._weight_units(layers)
        # A weight that several layers read (ALBERT's) would be pruned once per reader, each
        # reader keeping its own copy: such units are left as they are.
        unshared = [u for u in units if not any(len(w.outputs) > 1 for w in _weights(u))]
        kept = [u for u in unshared if not self._excluded(u)]
        found["skipped_shared_weight"] = len(units) - len(unshared)
        found["units_excluded"] = len(unshared) - len(kept)
        found["units"] = len(kept)
        return kept, found

    def _weight_units(self, layers: list[Linear]) -> tuple[list[Unit], dict[str, float]]:
        if not layers:
            raise PreconditionError(
                f"{self.name}: the graph has no MatMul/Gemm with a constant 2-D float weight"
            )
        units, indivisible = [], 0
        for lin in layers:
            if self.n_m is not None and lin.shape[0] % self.n_m[1]:
                indivisible += 1
            else:
                units.append(Unit("weights", lin))
        found: dict[str, float] = {"layers_found": len(layers)}
        if self.n_m is not None:
            found["skipped_not_multiple_of_m"] = indivisible
        return units, found

    def _excluded(self, unit: Unit) -> bool:
        return not all(
            selected(self.include, self.exclude, lin.node, [lin.matmul.weight.name])
            for lin in unit.linears
        )


def _weights(unit: Unit) -> list[gs.Constant]:
    """The constant weights of the unit's layers."""
    return [lin.matmul.weight for lin in unit.linears]
