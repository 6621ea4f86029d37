"""factorize-matmul: MatMul(x, W[k,n]) -> MatMul(MatMul(x, U[k,r]), V[r,n]).

Each selected dense layer y = x W (+ b) with a constant weight (`ir.linear`) becomes two thinner
layers through an intermediate of width r. That saves parameters and FLOPs only when
r (k + n) < k n; a layer whose chosen rank does not is left as it was (the stats say so). The
run reads as its steps:

1. statistics: the augmented Gram [x, 1]^T [x, 1] of each layer input over the real tokens of
   the calibration data, from one run of the teacher (`compress.grams`);
2. decomposition (`fitting`): truncated SVD of W (Eckart-Young: ||W - U V||_F^2 is the tail
   sum_{i > r} s_i^2), randomized SVD, or SVD of R W whitened by the inputs' second moment, so
   that the output error ||X (W - W')||_F is what is minimized;
3. ranks: each layer's rank rule (`ranks.RANK_RULES`), or one parameter budget for all layers
   (`allocation`), rounded to a multiple of rank-multiple;
4. factors and recovery: U = A_r S_r^1/2, V = S_r^1/2 B_r, then V and the bias refitted by ridge
   regression to the unfactorized layer's outputs (`recovery.refit`);
5. the rewrite (`edits`), and optionally distillation (`compress.distillation`).

Sequential: layers are factorized in graph order, each group sharing an input at once, fitted on
the inputs x_s it sees in the model compressed so far against the teacher's x_t (paired Grams
G_s, C, G_t). Factorized layers are marked by their node names (`.../lowrank_u`, `.../lowrank_v`)
and never factorized again, so a second run changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.ir.graph import WeightedMatMul, weighted_matmuls
from nlpress.ir.linear import by_input
from nlpress.ir.progress import steps
from nlpress.passes.base import Pass, PassResult, PreconditionError
from nlpress.passes.calibration import require_feeds
from nlpress.passes.compress.distillation import (
    check_distill_options,
    distill_epochs_option,
    distill_lr_option,
    distill_stage,
    require_distill,
)
from nlpress.passes.compress.grams import Grams, paired_grams
from nlpress.passes.compress.options import (
    check_exclude,
    check_include,
    exclude_option,
    include_option,
    selected,
)
from nlpress.passes.factorize_matmul.allocation import Plan, global_ranks, sensitivities
from nlpress.passes.factorize_matmul.edits import (
    MARK_U,
    MARK_V,
    dense_layer,
    input_grams,
    quantized_layer,
    rewrite,
)
from nlpress.passes.factorize_matmul.fitting import (
    Fit,
    Settings,
    decompose,
    fit,
    randomized_svd,
)
from nlpress.passes.factorize_matmul.ranks import (
    DEFAULT_RULE,
    RANK_RULES,
    check_rule_value,
    round_rank,
    useful_rank_limit,
)
from nlpress.passes.factorize_matmul.stats import Stats

__all__ = [
    "MARK_U",
    "MARK_V",
    "FactorizeMatmul",
    "randomized_svd",
    "round_rank",
    "useful_rank_limit",
]

log = logging.getLogger(__name__)

Method = Literal["svd", "randomized", "activation"]
METHODS: tuple[str, ...] = ("svd", "randomized", "activation")
Allocation = Literal["uniform", "global", "sensitivity"]
ALLOCATIONS: tuple[str, ...] = ("uniform", "global", "sensitivity")

# Passes after which factorize-matmul cannot run, and why.
_CONFLICTS: Mapping[str, str] = {
    "quantize-insert": (
        "quantize-insert turns each weight into a DequantizeLinear output, so no constant "
        "weight is left to factorize, and factors made afterwards would be float again"
    ),
}


@dataclass(frozen=True)
class FactorizeMatmul(Pass):
    """Factorize constant-weight MatMul/Gemm layers into two thinner ones (low rank).

    Options:
        rank-ratio: Keep this share of each matrix's full rank, r = round(q min(k, n)), in (0, 1].
        energy: Keep the fewest singular values holding this share of their squared sum, in
            (0, 1] (method=activation: of the output energy on calibration data).
        param-ratio: r = floor(p k n / (k + n)): the factors keep about this share of the
            parameters, in (0, 1); the default (0.5) when no other rank option is given.
        layer-cosine: Per layer, the smallest rank whose outputs on calibration data keep at
            least this cosine with the unfactorized layer's, in (0, 1).
        method: svd (truncated SVD of W), randomized (randomized SVD) or activation (SVD whitened
            by the calibration inputs, minimizing the error in the layer's outputs).
        allocation: uniform (each layer's own rule), global (param-ratio over all layers, where
            it cuts most error) or sensitivity (global, weighted by output loss).
        recover: Refit the second factor and the bias to the unfactorized layer's outputs on
            calibration data (ridge regression in closed form).
        sequential: Factorize in graph order, each layer fitted on the inputs it sees once the
            layers before it are factorized; needs calibration data.
        damping: Ridge strength for recovery and whitening, relative to the mean diagonal of the
            Gram matrix; >= 0.
        seed: Seed of the randomized SVD's sketch.
        budget-cosine: Deprecated here: the old spelling of layer-cosine (a per-layer cosine,
            not the model budget the other passes take).
        rank-multiple: Round each rank to a multiple of this (down for a cut, up for a floor; 1
            turns it off): ranks that fill whole vector lanes make faster thin matmuls.
    """

    name = "factorize-matmul"
    tolerance = None
    needs_calibration = True

    rank_ratio: float | None = None
    energy: float | None = None
    param_ratio: float | None = None
    layer_cosine: float | None = None
    method: Method = "svd"
    allocation: Allocation = "uniform"
    recover: bool = False
    sequential: bool = False
    damping: float = 1e-2
    include: tuple[str, ...] = include_option()
    exclude: tuple[str, ...] = exclude_option()
    seed: int = 0
    rank_multiple: int = 16
    distill_epochs: int = distill_epochs_option()
    distill_lr: float = distill_lr_option()
    budget_cosine: float | None = field(default=None, metadata={"deprecated": True})

    def __post_init__(self) -> None:
        check_distill_options(self.distill_epochs, self.distill_lr)
        if self.budget_cosine is not None:
            log.warning(
                "%s{budget-cosine} is deprecated: it is a per-layer cosine here, spelled "
                "layer-cosine; budget-cosine is the model's output cosine in other passes",
                self.name,
            )
            if self.layer_cosine is None:
                object.__setattr__(self, "layer_cosine", self.budget_cosine)
            object.__setattr__(self, "budget_cosine", None)
        chosen = [key for key in RANK_RULES if self._rule_value(key) is not None]
        if len(chosen) > 1:
            raise ValueError(
                "give at most one of rank-ratio, energy, param-ratio, layer-cosine; "
                f"got {', '.join(chosen)}"
            )
        if not chosen:
            object.__setattr__(self, DEFAULT_RULE[0].replace("-", "_"), DEFAULT_RULE[1])
        option, value = self.rule
        check_rule_value(option, value)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(
                f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}"
            )
        if self.allocation != "uniform" and self.param_ratio is None:
            raise ValueError(
                f"allocation={self.allocation} spends a parameter budget: give param-ratio"
            )
        if self.sequential and self.allocation != "uniform":
            raise ValueError(
                f"allocation={self.allocation} needs every layer at once: not with sequential"
            )
        if self.rank_multiple < 1:
            raise ValueError(f"rank-multiple must be >= 1, got {self.rank_multiple}")
        if not self.damping >= 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")
        check_exclude(self.name, self.exclude)
        check_include(self.include)

    def _rule_value(self, option: str) -> float | None:
        value: float | None = getattr(self, option.replace("-", "_"))
        return value

    @property
    def rule(self) -> tuple[str, float]:
        """The rank option in force and its value."""
        for option in RANK_RULES:
            value = self._rule_value(option)
            if value is not None:
                return option, value
        return DEFAULT_RULE

    @property
    def settings(self) -> Settings:
        """The options the fitting reads."""
        return Settings(
            self.method,
            self.rule,
            self.rank_multiple,
            self.recover,
            self.damping,
            self.seed,
            self.allocation == "uniform",
        )

    @property
    def needs_data(self) -> bool:
        """Whether this configuration cannot run without calibration feeds."""
        return (
            self.method == "activation"
            or self.recover
            or self.sequential
            or RANK_RULES[self.rule[0]].needs_data
            or self.allocation == "sensitivity"
            or self.distill_epochs > 0
        )

    def check_order(self, earlier: Sequence[Pass]) -> None:
        """Refuse to follow a pass that leaves no float constant weights to factorize."""
        for p in earlier:
            if p.name in _CONFLICTS:
                raise PreconditionError(
                    f"{self.name} cannot run after {p.name}: {_CONFLICTS[p.name]}; "
                    f"put {self.name} before {p.name}"
                )

    def requires(self, model: Model) -> None:
        """Refuse already-quantized weights."""
        quantized = quantized_layer(model.graph)
        if quantized is not None:
            raise PreconditionError(
                f"{self.name}: the weights are already quantized (DequantizeLinear feeds "
                f"{quantized!r}); run {self.name} before quantize-insert"
            )
        require_distill(self.name, self.distill_epochs)

    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        """Factorize the selected layers of a copy of `model`."""
        if self.needs_data:
            require_feeds(data, self.name)
        out = model.copy()
        layers = [layer for layer in weighted_matmuls(out.graph) if self._selected(layer.node)]
        stats = Stats()
        names = set(out.graph.tensors())
        if self.sequential:
            for group in steps(by_input(layers), "layer groups fitted in order"):
                (grams,) = paired_grams(out, model, [group[0].activation.name], data, flush_rows=1)
                plans = [p for layer in group if (p := self._plan(out.graph, layer, grams, stats))]
                self._apply(out.graph, plans, None, names, stats)
        else:
            grams_by_input = input_grams(out, layers, data)
            plans = [
                plan
                for layer in layers
                if (
                    plan := self._plan(
                        out.graph, layer, grams_by_input.get(id(layer.activation)), stats
                    )
                )
            ]
            ranks = None
            if self.allocation != "uniform":
                weights = self._weights(model, data, layers, plans, stats)
                ranks = global_ranks(self.settings, plans, weights)
            self._apply(out.graph, plans, ranks, names, stats)
        epochs = self.distill_epochs if stats.factorized else 0
        out, trained = distill_stage(out, model, data, epochs, self.distill_lr)
        return PassResult(out, stats.factorized > 0, {**stats.as_dict(), **trained})

    def factorize(
        self, weight: np.ndarray, bias: np.ndarray | None, grams: Grams | np.ndarray | None
    ) -> Fit:
        """The factors of one layer y = x W + b (grams: of its calibration inputs, or None)."""
        if isinstance(grams, np.ndarray):
            grams = Grams(grams)
        return fit(self.settings, decompose(self.settings, weight, bias, grams))

    def _plan(
        self, graph: gs.Graph, layer: WeightedMatMul, grams: Grams | None, stats: Stats
    ) -> Plan | None:
        label = layer.node.name or f"#{len(stats.layers)}"
        dense = dense_layer(graph, layer)
        if isinstance(dense, str):
            stats.skip(label, dense)
            return None
        linear, weight, bias = dense
        began = time.perf_counter()
        decomposition = decompose(self.settings, weight, bias, grams)
        return Plan(label, linear, decomposition, time.perf_counter() - began)

    def _weights(
        self,
        model: Model,
        data: Sequence[Feeds],
        layers: Sequence[WeightedMatMul],
        plans: Sequence[Plan],
        stats: Stats,
    ) -> list[float]:
        """Each plan's error weight: 1 (global) or its measured sensitivity."""
        if self.allocation != "sensitivity":
            return [1.0] * len(plans)
        weights = sensitivities(self.settings, model, data, self._selected, layers, plans)
        stats.sensitivity.update({p.label: w for p, w in zip(plans, weights, strict=True)})
        return weights

    def _apply(
        self,
        graph: gs.Graph,
        plans: Sequence[Plan],
        ranks: Sequence[int] | None,
        names: set[str],
        stats: Stats,
    ) -> None:
        for index, plan in enumerate(plans):
            began = time.perf_counter()
            found = fit(self.settings, plan.decomposition, None if ranks is None else ranks[index])
            seconds = plan.seconds + time.perf_counter() - began
            k, n = plan.decomposition.weight.shape
            if found.rank >= useful_rank_limit(k, n):
                stats.skip(plan.label, "no_gain", rank=found.rank)
                continue
            rewrite(graph, plan.linear, found, names)
            stats.add(plan.label, k, n, found, plan.decomposition, seconds)

    def _selected(self, node: gs.Node) -> bool:
        name = node.name or ""
        if name.endswith((MARK_U, MARK_V)):
            return False
        return selected(self.include, self.exclude, node)
