"""factorize-matmul: MatMul(x, W[k,n]) -> MatMul(MatMul(x, U[k,r]), V[r,n]).

Each selected dense layer y = x W (+ b) with a constant weight becomes two thinner layers through
an intermediate of width r. That saves parameters and FLOPs only when r (k + n) < k n, i.e.
r < k n / (k + n); a layer whose chosen rank does not meet that is left as it was (and the stats
say so). The bias stays where it was: the Add after a MatMul, or the Gemm's C.

Methods (the factors are split evenly, U = A S_r^1/2 and V = S_r^1/2 B, so neither factor has a
much larger range than the other, which suits quantize-insert afterwards):

- `svd`: truncated SVD of W. By Eckart-Young it minimizes ||W - U V||_F, and that error is the
  tail of the singular values: ||W - U V||_F^2 = sum_{i > r} s_i^2.
- `randomized`: the same truncation found by randomized SVD (Halko, Martinsson and Tropp 2011:
  a Gaussian sketch of r + 10 columns, two power iterations, QR, then an exact SVD of the small
  projected matrix); its time and weight error are in the stats, to set beside the exact one.
- `activation`: what matters is the layer's output on real inputs, not W. With X the calibration
  inputs (one row per real token; padding positions, attention mask 0, are left out) and
  C = X^T X their second moment, the output error of a
  replacement W' is ||X (W - W')||_F^2 = tr((W - W')^T C (W - W'))) = ||R (W - W')||_F^2 with
  R = C^1/2 (symmetric square root, damped: C + lambda I with lambda = `damping` times the mean
  of diag C, so that R is invertible). Substituting M = R W, the best rank-r M' is M's truncated
  SVD (Eckart-Young again), so W' = R^-1 M_r = (R^-1 U_r S_r^1/2)(S_r^1/2 V_r^T): whitening,
  truncating, un-whitening. Its relative output error is the tail of M's singular values,
  sum_{i > r} s_i(M)^2 / sum_i s_i(M)^2 (exact with no damping), and `energy=` on this method
  keeps a share of the output energy rather than of the weight's.

Recovery (`recover=true`) keeps the first factor U and refits the second, V and the bias, by
ridge regression to the unfactorized layer's outputs on the calibration inputs
(`passes.recovery.refit` with projection U): teacher-guided, layer by layer, in closed form. A
layer without a bias gets none (its bias is held at zero).

Sequential (`sequential=true`): layers are factorized in graph order, each group sharing an
input at once, and a layer is fitted on the inputs x_s it sees in the model compressed so far,
not the teacher's x_t. `paired_grams` collects G_s = sum x~_s^T x~_s, C = sum x~_s^T x~_t and
G_t in one run of student and teacher; whitening uses G_s, and recovery solves
min ||x~_s U~ S - x~_t T||^2, S = (U~^T G_s U~ + Lambda)^-1 U~^T C T, so a layer also takes out
the error its input carries in. The jointly optimal (U, V, c) of that problem is reduced-rank
regression: with centred covariances S_ss, S_st, the least-squares map A = S_ss^-1 S_st W, then
the truncated SVD of S_ss^1/2 A, un-whitened; with x_s = x_t it is the activation method
above. Measured on minilm-l6 (param-ratio 0.6, FFN and attention projections; harness outside
the pass, same calibration text): sequential reduced-rank regression reached sentence cosine
0.803, against 0.798 one-shot: on this model the loss is not error piling up layer by layer.

Global allocation (`allocation=global`): the parameter budget goes, a block of rank-multiple
singular values at a time, where it removes the largest share of a layer's relative squared
output error. On minilm-l6 (param-ratio 0.6, activation, recovery) that did worse than uniform
ranks (cosine 0.740 against 0.788): a layer's relative error is a poor proxy for its effect on
the model's output. Truncating one layer at a time (calibration data) showed a unit of whitened
squared output error moving the final hidden states about 1e-4 (query, key), 4e-4 (value, FFN
up) and 3e-3 to 5e-3 (attention output, FFN down) times, a 50-fold spread that a relative-error
greedy ignores (it gave FFN down rank 16). `allocation=sensitivity` measures it: each layer alone
is factorized at the rank the options give it, and the loss 1 - cosine of the model's output to
the unfactorized model's on the calibration data (pooled over real tokens), divided by the
layer's truncated share of its (whitened) energy at that rank, weights its gains in the same
allocation (one calibration run of the whole model per layer). In the same setting it reached
0.841, giving query and key 48 to 128, value and attention output 96 to 176, FFN up 176 to 256
and FFN down 144 to 240.

Distillation (`distill-epochs`): after the closed-form steps, the factors and biases are trained
end to end so that the model's pooled output and hidden states follow the unfactorized model's
(`passes/distill.py`). Where closed-form fitting stops, layer by layer, this trains the layers
together: in the same setting as above (with the zoo's 1,299 calibration sentences, where
sensitivity allocation alone gives 0.854), 20 epochs raised the cosine to 0.928 and 100 epochs
to 0.943 (held-out loss 0.140 to 0.071 and 0.059: five times the training took off only a sixth
more). A 40% cut of this model's FFN and attention projections does not get back to 0.97 on
this text.

Rank selection (at most one of these; with none, param-ratio=0.5):

- `param-ratio=p`: r = floor(p k n / (k + n)), so the factors hold about a share p of the
  matrix's parameters and FLOPs ("cut parameters by 40%" is param-ratio=0.6).
- `rank-ratio=q`: r = round(q min(k, n)), a share of the full rank.
- `energy=e`: the fewest singular values holding a share e of the squared singular values.
- `budget-cosine=c`: per layer, the smallest r whose outputs on the calibration data have cosine
  at least c with the unfactorized layer's (the cosine of the two output matrices as vectors),
  found by bisection.

Rank rounding (`rank-multiple=m`, default 16): a chosen rank r >= m becomes a multiple of m, down
(m floor(r / m)) where the rank came from a parameter share, so the cut is at least the one asked,
and up where it came from an energy or cosine floor, so the floor still holds. The first factor's
matmul [tokens, k] x [k, r] has r as its vectorized (innermost) axis: at r = 184 or 115 the CPU
schedule leaves a scalar tail of 8 or 3 columns per row tile, and that kernel ran 3 to 14 times
slower than at r = 176 or 112 (x86, AVX-512, 16 floats a vector). 16 is a multiple of the vector
lanes of AVX-512, AVX2 and NEON alike.

Statistics on calibration data come from one run of the teacher: the augmented Gram
[x, 1]^T [x, 1] of each distinct layer input over its real tokens
(`compress.grams.token_input_grams`). A layer's relative
output error is ||Y' - Y||_F / ||Y||_F on those inputs (Y the layer's outputs with bias).
Factorized layers are marked by their node names (`.../lowrank_u`, `.../lowrank_v`) and are never
factorized again, so a second run changes nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Model
from nlpress.ir.graph import (
    WeightedMatMul,
    fresh_name,
    fresh_node_name,
    producer,
    weighted_matmuls,
)
from nlpress.ir.linear import Linear, linear_layer
from nlpress.ir.progress import steps
from nlpress.passes.base import Pass, PassResult, PreconditionError
from nlpress.passes.calibration import require_feeds
from nlpress.passes.compress.allocate import allocate
from nlpress.passes.compress.distillation import (
    check_distill_options,
    distill_epochs_option,
    distill_lr_option,
    distill_stage,
    require_distill,
)
from nlpress.passes.compress.grams import Grams, paired_grams, token_input_grams
from nlpress.passes.compress.sensitivity import Fidelity
from nlpress.passes.recovery import refit

Method = Literal["svd", "randomized", "activation"]
METHODS: tuple[str, ...] = ("svd", "randomized", "activation")
Allocation = Literal["uniform", "global", "sensitivity"]
ALLOCATIONS: tuple[str, ...] = ("uniform", "global", "sensitivity")

# Node-name suffixes that mark the two halves of a factorized layer.
MARK_U = "/lowrank_u"
MARK_V = "/lowrank_v"

# A weight with at least this share of exact zeros was made sparse (prune-sparsify); a dense
# low-rank factorization would undo that, so such layers are skipped.
SPARSE_SHARE = 0.25

# Passes after which factorize-matmul cannot run, and why.
_CONFLICTS: Mapping[str, str] = {
    "quantize-insert": (
        "quantize-insert turns each weight into a DequantizeLinear output, so no constant "
        "weight is left to factorize, and factors made afterwards would be float again"
    ),
}

_OVERSAMPLE = 10
_POWER_ITERATIONS = 2


@dataclass(frozen=True)
class FactorizeMatmul(Pass):
    """Factorize constant-weight MatMul/Gemm layers into two thinner ones (low rank).

    Options:
        rank-ratio: Keep this share of each matrix's full rank, r = round(q min(k, n)), in (0, 1].
        energy: Keep the fewest singular values that hold this share of their squared sum, in
            (0, 1] (with method=activation: of the output energy on calibration data).
        param-ratio: Choose r = floor(p k n / (k + n)) so the factors hold about this share p of
            the matrix's parameters and FLOPs, in (0, 1); 0.6 cuts them by 40%. The default
            (0.5) when no other rank option is given.
        budget-cosine: Per layer, the smallest rank whose outputs on calibration data keep at
            least this cosine with the unfactorized layer's, in (0, 1).
        method: svd (truncated SVD of W), randomized (randomized SVD, for large matrices) or
            activation (SVD whitened by the calibration inputs' second moment, minimizing the
            error in the layer's outputs).
        allocation: uniform (each matrix gets the rank its own option value gives), global
            (with param-ratio only: the selected matrices together keep that share of their
            parameters, and ranks go where a parameter removes the largest share of a layer's
            relative squared error; a layer that would get nearly all of its useful rank stays
            dense) or sensitivity (as global, each layer's error weighted by how much the
            model's output loses when that layer alone is factorized; needs calibration data).
        recover: Refit the second factor and the bias to the unfactorized layer's outputs on
            calibration data (ridge regression in closed form).
        sequential: Factorize layer by layer in graph order, each fitted on the inputs it sees
            once the layers before it are factorized (and, with recover, to the teacher's outputs
            on the teacher's inputs), so errors do not pile up; one calibration run per group of
            layers sharing an input. Needs calibration data.
        damping: Ridge strength for recovery and for whitening, relative to the mean diagonal
            of the Gram matrix; >= 0.
        include: Regexes on node names; only matching layers are factorized (default: all).
        exclude: Regexes on node names; matching layers are left as they are.
        seed: Seed of the randomized SVD's sketch.
        rank-multiple: Round each chosen rank to a multiple of this (>= 1; 1 turns rounding
            off): down for param-ratio, rank-ratio and allocation=global (the parameter cut is
            kept), up for energy and budget-cosine (the kept share or cosine is kept). Ranks
            below one multiple are left as chosen. Thin matmuls whose width is a multiple of the
            vector lanes (16 floats on AVX-512) vectorize without a scalar tail: with the
            default 16 they run several times faster on x86 than at odd ranks.
    """

    name = "factorize-matmul"
    tolerance = None
    needs_calibration = True

    rank_ratio: float | None = None
    energy: float | None = None
    param_ratio: float | None = None
    budget_cosine: float | None = None
    method: Method = "svd"
    allocation: Allocation = "uniform"
    recover: bool = False
    sequential: bool = False
    damping: float = 1e-2
    include: tuple[str, ...] = field(default=())
    exclude: tuple[str, ...] = field(default=())
    seed: int = 0
    rank_multiple: int = 16
    distill_epochs: int = distill_epochs_option()
    distill_lr: float = distill_lr_option()

    def __post_init__(self) -> None:
        check_distill_options(self.distill_epochs, self.distill_lr)
        chosen = [n for n in _SELECTORS if getattr(self, n) is not None]
        if len(chosen) > 1:
            names = ", ".join(n.replace("_", "-") for n in chosen)
            raise ValueError(
                f"give at most one of rank-ratio, energy, param-ratio, budget-cosine; got {names}"
            )
        if not chosen:
            object.__setattr__(self, "param_ratio", 0.5)
        _check_range("rank-ratio", self.rank_ratio, 0.0, 1.0, closed_high=True)
        _check_range("energy", self.energy, 0.0, 1.0, closed_high=True)
        _check_range("param-ratio", self.param_ratio, 0.0, 1.0, closed_high=False)
        _check_range("budget-cosine", self.budget_cosine, 0.0, 1.0, closed_high=False)
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
        for pattern in (*self.include, *self.exclude):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regex {pattern!r}: {exc}") from exc

    @property
    def needs_data(self) -> bool:
        """Whether this configuration cannot run without calibration feeds."""
        return (
            self.method == "activation"
            or self.recover
            or self.sequential
            or self.budget_cosine is not None
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
        """Need calibration data where the options use it; refuse already-quantized weights."""
        quantized = _quantized_layer(model.graph)
        if quantized is not None:
            raise PreconditionError(
                f"{self.name}: the weights are already quantized (DequantizeLinear feeds "
                f"{quantized!r}); run {self.name} before quantize-insert"
            )
        if self.needs_data:
            require_feeds(model, self.name)
        require_distill(self.name, self.distill_epochs)

    def run(self, model: Model) -> PassResult:
        """Factorize the selected layers of a copy of `model`."""
        out = model.copy()
        layers = [layer for layer in weighted_matmuls(out.graph) if self._selected(layer.node)]
        stats = Stats()
        names = set(out.graph.tensors())
        if self.sequential:
            for group in steps(_groups(layers), "layer groups fitted in order"):
                feeds = model.calibration
                (grams,) = paired_grams(out, model, [group[0].activation.name], feeds, flush_rows=1)
                plans = [p for layer in group if (p := self._plan(out.graph, layer, grams, stats))]
                self._apply(out.graph, plans, None, names, stats)
        else:
            grams_by_input = _grams(out, layers, self.needs_data)
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
                weights = self._sensitivities(model, layers, plans, stats)
                ranks = self._global_ranks(plans, weights)
            self._apply(out.graph, plans, ranks, names, stats)
        summary = stats.as_dict()
        epochs = self.distill_epochs if stats.factorized else 0
        out, trained = distill_stage(out, model, model.calibration, epochs, self.distill_lr)
        return PassResult(out, stats.factorized > 0, {**summary, **trained})

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
            fit = self.fit(plan.decomposition, None if ranks is None else ranks[index])
            seconds = plan.seconds + time.perf_counter() - began
            k, n = plan.decomposition.weight.shape
            if fit.rank >= useful_rank_limit(k, n):
                stats.skip(plan.label, "no_gain", rank=fit.rank)
                continue
            _rewrite(graph, plan.linear, fit, names)
            stats.add(plan.label, k, n, fit, plan.decomposition, seconds)

    def _selected(self, node: gs.Node) -> bool:
        name = node.name or ""
        if name.endswith((MARK_U, MARK_V)):
            return False
        if self.include and not any(re.search(p, name) for p in self.include):
            return False
        return not any(re.search(p, name) for p in self.exclude)

    def _plan(
        self, graph: gs.Graph, layer: WeightedMatMul, grams: Grams | None, stats: Stats
    ) -> Plan | None:
        label = layer.node.name or f"#{len(stats.layers)}"
        dense = _dense_layer(graph, layer)
        if isinstance(dense, str):
            stats.skip(label, dense)
            return None
        linear, weight, bias = dense
        began = time.perf_counter()
        decomposition = self.decompose(weight, bias, grams)
        return Plan(label, linear, decomposition, time.perf_counter() - began)

    def factorize(
        self, weight: np.ndarray, bias: np.ndarray | None, grams: Grams | np.ndarray | None
    ) -> Fit:
        """The factors of one layer y = x W + b (grams: of its calibration inputs, or None)."""
        return self.fit(self.decompose(weight, bias, grams))

    def decompose(
        self, weight: np.ndarray, bias: np.ndarray | None, grams: Grams | np.ndarray | None
    ) -> Decomposition:
        """The singular triplets of W (or of R W, whitened) that the factors are cut from."""
        if isinstance(grams, np.ndarray):
            grams = Grams(grams)
        gram = None if grams is None else grams.student
        whitening = None
        if self.method == "activation":
            if gram is None:
                raise PreconditionError(f"{self.name}: method=activation needs calibration data")
            whitening = whiteners(gram[:-1, :-1], self.damping)
        target = weight if whitening is None else whitening[0] @ weight
        k, n = weight.shape
        cap = max(1, useful_rank_limit(k, n) - 1)
        if self.method == "randomized":
            explicit = self.allocation == "uniform" and (
                self.rank_ratio is not None or self.param_ratio is not None
            )
            rank = min(cap + 1, _explicit_rank(self, k, n)) if explicit else cap
            u, s, vt = randomized_svd(target, rank, self.seed)
        else:
            u, s, vt = np.linalg.svd(target, full_matrices=False)
        energy = float(np.sum(target * target))
        return Decomposition(u, s, vt, energy, whitening, weight, bias, grams)

    def fit(self, decomposition: Decomposition, rank: int | None = None) -> Fit:
        """The factors at `rank`, or at the rank the options select."""
        if rank is not None:
            return self._fit(decomposition, rank)
        if self.budget_cosine is not None:
            found = self._search(decomposition)
            return self._rounded(decomposition, found, up=True)
        k, n = decomposition.weight.shape
        rank = select_rank(self, decomposition, k, n)
        up = self.energy is not None
        return self._fit(decomposition, round_rank(rank, self.rank_multiple, up))

    def _rounded(self, d: Decomposition, found: Fit, *, up: bool) -> Fit:
        rank = round_rank(found.rank, self.rank_multiple, up)
        if rank == found.rank:
            return found
        if rank >= useful_rank_limit(*d.weight.shape):
            return replace(found, rank=rank)  # no gain left: the layer stays dense
        return self._fit(d, rank)

    def _fit(self, d: Decomposition, rank: int) -> Fit:
        rank = max(1, min(rank, len(d.s)))
        root = np.sqrt(d.s[:rank])
        first = d.u[:, :rank] * root
        if d.whitening is not None:
            first = d.whitening[1] @ first
        second = root[:, None] * d.vt[:rank]
        offset = d.bias
        if self.recover:
            if d.grams is None:
                raise PreconditionError(f"{self.name}: recover=true needs calibration data")
            gram, cross = _bias_grams(d.grams, d.bias)
            second, fitted = refit(gram, first, d.weight, d.bias, self.damping, cross)
            offset = None if d.bias is None else fitted
        return Fit(rank, first, second, offset)

    def _search(self, d: Decomposition) -> Fit:
        assert self.budget_cosine is not None
        if d.grams is None:
            raise PreconditionError(f"{self.name}: budget-cosine needs calibration data")
        k, n = d.weight.shape
        low, high = 1, min(len(d.s), max(1, useful_rank_limit(k, n) - 1))
        best = self._fit(d, high)
        if fit_cosine(d.grams, best, d.weight, d.bias) < self.budget_cosine:
            # Not even the largest rank that saves anything meets the budget.
            return replace(best, rank=high + 1)
        while low < high:
            middle = (low + high) // 2
            fit = self._fit(d, middle)
            if fit_cosine(d.grams, fit, d.weight, d.bias) >= self.budget_cosine:
                best, high = fit, middle
            else:
                low = middle + 1
        return best

    def _sensitivities(
        self,
        model: Model,
        layers: Sequence[WeightedMatMul],
        plans: Sequence[Plan],
        stats: Stats,
    ) -> list[float]:
        """Each plan's loss in the model's output per unit of its relative squared error.

        1 under allocation=global. Under sensitivity, each layer alone is factorized at the
        rank the options give it, in a copy of `model`, and 1 - the pooled cosine of the copy's
        first output to the model's on the calibration data is divided by the layer's
        truncated share of its (whitened) energy at that rank.
        """
        if self.allocation != "sensitivity":
            return [1.0] * len(plans)
        fidelity = Fidelity(model, require_feeds(model, self.name))
        weights = []
        for plan in steps(plans, "sensitivity of each layer"):
            fit = self.fit(plan.decomposition)
            d = plan.decomposition
            tail = float(np.sum(d.s[fit.rank :].astype(np.float64) ** 2)) / max(d.energy, 1e-300)
            alone = self._alone(model, layers.index(plan.linear.matmul), fit)
            loss = fidelity.loss(alone)
            weights.append(max(loss, 0.0) / max(tail, 1e-12))
            stats.sensitivity[plan.label] = weights[-1]
        return weights

    def _alone(self, model: Model, index: int, fit: Fit) -> Model:
        """A copy of `model` with only its index-th selected layer factorized by `fit`."""
        copy = model.copy()
        selected = [layer for layer in weighted_matmuls(copy.graph) if self._selected(layer.node)]
        dense = _dense_layer(copy.graph, selected[index])
        assert not isinstance(dense, str)  # the same layer was planned in the model itself
        _rewrite(copy.graph, dense[0], fit, set(copy.graph.tensors()))
        return copy

    def _global_ranks(self, plans: Sequence[Plan], weights: Sequence[float]) -> list[int]:
        """Ranks that spend param-ratio of all the plans' parameters where they cut most error.

        A layer's error counts `weights[i]` times (its measured sensitivity, or 1). Ranks grow
        in blocks of rank-multiple singular values (one at a time for a layer whose useful rank
        is under two blocks), so the budget is spent on the ranks that are kept.
        """
        ratio = self.param_ratio if self.param_ratio is not None else 0.5
        shapes = [p.decomposition.weight.shape for p in plans]
        caps = [
            min(len(p.decomposition.s), max(1, useful_rank_limit(k, n) - 1))
            for p, (k, n) in zip(plans, shapes, strict=True)
        ]
        steps = [self.rank_multiple if 2 * self.rank_multiple <= cap else 1 for cap in caps]
        ranks = list(steps)
        budget = ratio * sum(k * n for k, n in shapes)
        budget -= sum(step * (k + n) for step, (k, n) in zip(steps, shapes, strict=True))
        costs = []
        for index, (plan, (k, n)) in enumerate(zip(plans, shapes, strict=True)):
            d, step = plan.decomposition, steps[index]
            share = weights[index] / max(d.energy, 1e-300) / (k + n)
            gains = d.s[: caps[index]].astype(np.float64) ** 2 * share
            blocks = [
                float(np.sum(gains[first : first + step])) / step
                for first in range(step, caps[index] - step + 1, step)
            ]
            costs.append(-np.array(blocks))
        # Singular values come sorted, so each layer's blocks gain less and less: taking the
        # best share of error removed per parameter first keeps every layer's kept values a
        # leading run.
        prices = [step * (k + n) for step, (k, n) in zip(steps, shapes, strict=True)]
        taken = allocate(costs, prices, budget)
        ranks = [rank + count * step for rank, count, step in zip(ranks, taken, steps, strict=True)]
        return [rank if rank < cap else cap + 1 for rank, cap in zip(ranks, caps, strict=True)]


_SELECTORS = ("rank_ratio", "energy", "param_ratio", "budget_cosine")


def _check_range(
    name: str, value: float | None, low: float, high: float, *, closed_high: bool
) -> None:
    if value is None:
        return
    above = value > high if closed_high else value >= high
    if not value > low or above:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must be in ({low:g}, {high:g}{bracket}, got {value}")


@dataclass(frozen=True)
class Fit:
    """A layer's factors: y ~ (x @ first) @ second + bias, at rank `rank`."""

    rank: int
    first: np.ndarray
    second: np.ndarray
    bias: np.ndarray | None


@dataclass(frozen=True)
class Decomposition:
    """A layer's singular triplets (of W, or of R W with whitening = (R, R^-1)) and its data."""

    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    energy: float
    whitening: tuple[np.ndarray, np.ndarray] | None
    weight: np.ndarray
    bias: np.ndarray | None
    grams: Grams | None


@dataclass(frozen=True)
class Plan:
    """A layer about to be factorized: where it is and its decomposition."""

    label: str
    linear: Linear
    decomposition: Decomposition
    seconds: float


def useful_rank_limit(k: int, n: int) -> int:
    """The smallest rank at which factorizing a k x n matrix saves nothing: ceil(kn / (k+n))."""
    return -(-k * n // (k + n))


def select_rank(options: FactorizeMatmul, d: Decomposition, k: int, n: int) -> int:
    """The rank that rank-ratio, energy or param-ratio asks for, given a decomposition."""
    s = d.s
    if options.energy is not None:
        kept = np.cumsum(s.astype(np.float64) ** 2) / max(d.energy, 1e-300)
        index = int(np.searchsorted(kept, options.energy * (1 - 1e-12)))
        return min(index + 1, len(s))
    return _explicit_rank(options, k, n)


def round_rank(rank: int, multiple: int, up: bool) -> int:
    """`rank` rounded down (or up) to a multiple of `multiple`; ranks below one multiple stay."""
    if multiple <= 1 or rank < multiple:
        return rank
    return -(-rank // multiple) * multiple if up else rank - rank % multiple


def _explicit_rank(options: FactorizeMatmul, k: int, n: int) -> int:
    if options.rank_ratio is not None:
        return max(1, round(options.rank_ratio * min(k, n)))
    ratio = options.param_ratio if options.param_ratio is not None else 0.5
    return max(1, int(ratio * k * n / (k + n)))


def randomized_svd(
    matrix: np.ndarray, rank: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The leading `rank` singular triplets of `matrix` by a seeded randomized range finder."""
    rng = np.random.default_rng(seed)
    k, n = matrix.shape
    width = min(rank + _OVERSAMPLE, k, n)
    basis, _ = np.linalg.qr(matrix @ rng.standard_normal((n, width)))
    for _ in range(_POWER_ITERATIONS):
        side, _ = np.linalg.qr(matrix.T @ basis)
        basis, _ = np.linalg.qr(matrix @ side)
    u, s, vt = np.linalg.svd(basis.T @ matrix, full_matrices=False)
    return (basis @ u)[:, :rank], s[:rank], vt[:rank]


def whiteners(second_moment: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """R = (C + lambda I)^1/2 and its inverse, lambda = damping * mean(diag C)."""
    size = second_moment.shape[0]
    ridge = damping * float(np.mean(np.diag(second_moment))) if size else 0.0
    values, vectors = np.linalg.eigh(second_moment + ridge * np.eye(size))
    values = np.maximum(values, max(float(values.max(initial=0.0)), 1e-300) * 1e-12)
    root = np.sqrt(values)
    return (vectors * root) @ vectors.T, (vectors / root) @ vectors.T


def fit_cosine(grams: Grams, fit: Fit, weight: np.ndarray, bias: np.ndarray | None) -> float:
    """Cosine between the teacher layer's outputs and the factorized ones, over all positions."""
    target = _affine(np.eye(weight.shape[0]), weight, bias)
    approx = _affine(fit.first, fit.second, fit.bias)
    cross = float(np.sum((grams.mixed @ target) * approx))
    norms = float(np.sum((grams.target @ target) * target))
    norms *= float(np.sum((grams.student @ approx) * approx))
    return cross / max(float(np.sqrt(max(norms, 0.0))), 1e-300)


def relative_error(grams: Grams, fit: Fit, weight: np.ndarray, bias: np.ndarray | None) -> float:
    """||Y' - Y||_F / ||Y||_F: factorized outputs Y' against the teacher layer's outputs Y."""
    target = _affine(np.eye(weight.shape[0]), weight, bias)
    approx = _affine(fit.first, fit.second, fit.bias)
    reference = float(np.sum((grams.target @ target) * target))
    cross = float(np.sum((grams.mixed @ target) * approx))
    own = float(np.sum((grams.student @ approx) * approx))
    return float(np.sqrt(max(own - 2 * cross + reference, 0.0) / max(reference, 1e-300)))


def _affine(first: np.ndarray, second: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """The [k+1, n] matrix mapping [x, 1] to x first second + bias."""
    offset = np.zeros(second.shape[1]) if bias is None else bias
    return np.vstack([first @ second, offset])


def _bias_grams(grams: Grams, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The Grams to refit with: a layer without bias gets its constant column decoupled."""
    if bias is None:
        return _decoupled(grams.student, 1.0), (
            None if grams.cross is None else _decoupled(grams.cross, 0.0)
        )
    return grams.student, grams.cross


def _decoupled(gram: np.ndarray, corner: float) -> np.ndarray:
    out = gram.copy()
    out[-1, :] = 0.0
    out[:, -1] = 0.0
    out[-1, -1] = corner
    return out


def _groups(layers: Sequence[WeightedMatMul]) -> list[list[WeightedMatMul]]:
    """The layers grouped by the tensor they read, in graph order."""
    groups: dict[int, list[WeightedMatMul]] = {}
    for layer in layers:
        groups.setdefault(id(layer.activation), []).append(layer)
    return list(groups.values())


def _grams(model: Model, layers: Sequence[WeightedMatMul], needed: bool) -> dict[int, Grams]:
    """The augmented Gram of each distinct layer input, keyed by the tensor's identity."""
    if not layers or not (needed or model.calibration):
        return {}
    inputs = list({id(layer.activation): layer.activation for layer in layers}.values())
    grams = token_input_grams(model, inputs, model.calibration)
    return {id(t): Grams(g) for t, g in zip(inputs, grams, strict=True)}


def _dense_layer(
    graph: gs.Graph, layer: WeightedMatMul
) -> tuple[Linear, np.ndarray, np.ndarray | None] | str:
    """The layer and its effective W [k, n] and b in float64, or why it cannot be factorized."""
    linear = linear_layer(graph, layer)
    if isinstance(linear, str):
        return linear
    values = np.asarray(layer.weight.values)
    if len(layer.weight.outputs) > 1:
        return "shared_weight"
    if values.size and np.mean(values == 0) >= SPARSE_SHARE:
        return "sparse"
    if linear.alpha == 0.0:
        return "gemm_alpha_zero"
    effective = linear.effective()
    return effective if isinstance(effective, str) else (linear, *effective)


def _rewrite(graph: gs.Graph, linear: Linear, fit: Fit, names: set[str]) -> None:
    """Put MatMul(x, U) before the layer's node and make that node read (h, V)."""
    layer = linear.matmul
    node, dtype = layer.node, np.asarray(layer.weight.values).dtype
    base = node.name or layer.weight.name
    first = gs.Constant(
        fresh_name(names, f"{layer.weight.name}_lowrank_u"), fit.first.astype(dtype)
    )
    second_values = _second_values(layer, fit)
    second = gs.Constant(
        fresh_name(names, f"{layer.weight.name}_lowrank_v"), second_values.astype(dtype)
    )
    hidden = gs.Variable(fresh_name(names, f"{base}/lowrank_h"), dtype=dtype)
    matmul = gs.Node(
        "MatMul",
        fresh_node_name(graph, base + MARK_U),
        inputs=[layer.activation, first],
        outputs=[hidden],
    )
    inputs = list(node.inputs)
    inputs[0], inputs[1] = hidden, second
    if fit.bias is not None and linear.bias is not None:
        _replace_bias(linear, fit.bias, inputs, names)
    node.inputs = inputs
    node.name = base + MARK_V
    graph.nodes.insert(graph.nodes.index(node), matmul)


def _second_values(layer: WeightedMatMul, fit: Fit) -> np.ndarray:
    if layer.node.op != "Gemm":
        return fit.second
    second = fit.second / float(layer.node.attrs.get("alpha", 1.0))
    return second.T if layer.transposed else second


def _replace_bias(
    linear: Linear, bias: np.ndarray, inputs: list[gs.Tensor], names: set[str]
) -> None:
    """Give the layer its refitted bias, in the tensor and node where its old bias was."""
    old = linear.bias
    assert old is not None
    dtype = np.asarray(old.values).dtype
    if linear.node.op == "Gemm":
        values = bias / linear.beta
        shape = old.values.shape if old.values.size == bias.size else bias.shape
        new = gs.Constant(
            fresh_name(names, f"{old.name}_refit"), values.reshape(shape).astype(dtype)
        )
        inputs[2] = new
        return
    add = linear.bias_node
    assert add is not None
    new = gs.Constant(
        fresh_name(names, f"{old.name}_refit"), bias.reshape(old.values.shape).astype(dtype)
    )
    add.inputs = [new if t is old else t for t in add.inputs]


def _quantized_layer(graph: gs.Graph) -> str | None:
    """The name of a MatMul/Gemm whose weight comes from DequantizeLinear, if there is one."""
    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm"):
            continue
        for tensor in node.inputs[:2]:
            source = producer(tensor)
            if (
                source is not None
                and source.op == "DequantizeLinear"
                and isinstance(source.inputs[0], gs.Constant)
            ):
                return str(node.name)
    return None


@dataclass
class Stats:
    """Per-layer and total numbers of one run."""

    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)
    factorized: int = 0

    def skip(self, label: str, reason: str, rank: int | None = None) -> None:
        """Record a layer left as it was, and why."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        entry: dict[str, float] = {f"skipped_{reason}": 1.0}
        if rank is not None:
            entry["r"] = float(rank)
        self.layers[label] = entry

    def add(
        self,
        label: str,
        k: int,
        n: int,
        fit: Fit,
        decomposition: Decomposition,
        seconds: float,
    ) -> None:
        """Record a factorized layer."""
        self.factorized += 1
        approx = fit.first @ fit.second
        entry = {
            "k": float(k),
            "n": float(n),
            "r": float(fit.rank),
            "params_before": float(k * n),
            "params_after": float(fit.rank * (k + n)),
            "flops_before": float(2 * k * n),
            "flops_after": float(2 * fit.rank * (k + n)),
            "weight_error": _relative(approx - decomposition.weight, decomposition.weight),
            "seconds": seconds,
        }
        d = decomposition
        if d.grams is not None:
            entry["output_error"] = relative_error(d.grams, fit, d.weight, d.bias)
        self.layers[label] = entry

    def as_dict(self) -> dict[str, float]:
        """Totals, then `layer.<node name>.<stat>` for every layer considered."""
        done = [e for e in self.layers.values() if "params_after" in e]
        totals: dict[str, float] = {
            "factorized": float(self.factorized),
            **{f"skipped_{r}": float(c) for r, c in sorted(self.skipped.items())},
        }
        for key in ("params_before", "params_after", "flops_before", "flops_after", "seconds"):
            totals[key] = float(sum(e[key] for e in done))
        if done:
            totals["param_ratio"] = totals["params_after"] / totals["params_before"]
        errors = [e["output_error"] for e in done if "output_error" in e]
        if errors:
            totals["output_error_mean"] = float(np.mean(errors))
            totals["output_error_max"] = float(np.max(errors))
        for label, entry in self.layers.items():
            totals.update({f"layer.{label}.{k}": v for k, v in entry.items()})
        totals.update({f"layer.{label}.sensitivity": w for label, w in self.sensitivity.items()})
        return totals


def _relative(difference: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(difference) / max(float(np.linalg.norm(reference)), 1e-300))
