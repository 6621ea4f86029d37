"""Ranks for all layers at once: a parameter budget spent where it cuts the most output error.

With param-ratio p, the selected layers together keep p sum k n parameters. Keeping singular
value i of a layer removes s_i^2 / sum_j s_j^2 of its relative squared (whitened) output error
and costs k + n parameters; blocks of rank-multiple values go, best error removed per parameter
first, through the shared allocator (`compress.allocate`). Under allocation=sensitivity each
layer's error is weighted by the model's output loss with that layer alone factorized at the
rank its rule gives, divided by the share of its energy truncated there
(`compress.sensitivity`); under global every weight is 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.ir.graph import WeightedMatMul, weighted_matmuls
from nlpress.ir.linear import Linear
from nlpress.ir.progress import steps
from nlpress.passes.compress.allocate import allocate
from nlpress.passes.compress.sensitivity import Fidelity
from nlpress.passes.factorize_matmul.edits import dense_layer, rewrite
from nlpress.passes.factorize_matmul.fitting import Decomposition, Fit, Settings, fit
from nlpress.passes.factorize_matmul.ranks import useful_rank_limit


@dataclass(frozen=True)
class Plan:
    """A layer about to be factorized: where it is and its decomposition."""

    label: str
    linear: Linear
    decomposition: Decomposition
    seconds: float


def sensitivities(
    settings: Settings,
    model: Model,
    feeds: Sequence[Feeds],
    selected: Callable[[gs.Node], bool],
    layers: Sequence[WeightedMatMul],
    plans: Sequence[Plan],
) -> list[float]:
    """Each plan's loss in the model's output per unit of its relative squared error.

    `layers` are the selected layers in graph order, of the graph the plans were made on.
    """
    fidelity = Fidelity(model, feeds)
    weights = []
    for plan in steps(plans, "sensitivity of each layer"):
        found = fit(settings, plan.decomposition)
        d = plan.decomposition
        tail = float(np.sum(d.s[found.rank :].astype(np.float64) ** 2)) / max(d.energy, 1e-300)
        index = layers.index(plan.linear.matmul)
        loss = fidelity.loss(_alone(model, selected, index, found))
        weights.append(max(loss, 0.0) / max(tail, 1e-12))
    return weights


def _alone(model: Model, selected: Callable[[gs.Node], bool], index: int, found: Fit) -> Model:
    """A copy of `model` with only its index-th selected layer factorized by `found`."""
    copy = model.copy()
    layers = [layer for layer in weighted_matmuls(copy.graph) if selected(layer.node)]
    dense = dense_layer(copy.graph, layers[index])
    assert not isinstance(dense, str)  # the same layer was planned in the model itself
    rewrite(copy.graph, dense[0], found, set(copy.graph.tensors()))
    return copy


def global_ranks(settings: Settings, plans: Sequence[Plan], weights: Sequence[float]) -> list[int]:
    """Ranks that spend param-ratio of all the plans' parameters where they cut most error.

    Ranks grow in blocks of rank-multiple singular values (one at a time for a layer whose
    useful rank is under two blocks), so the budget is spent on the ranks that are kept; a
    layer that would get all of its useful rank gets one past it and stays dense.
    """
    ratio = settings.rule[1]
    multiple = settings.rank_multiple
    shapes = [p.decomposition.weight.shape for p in plans]
    caps = [
        min(len(p.decomposition.s), max(1, useful_rank_limit(k, n) - 1))
        for p, (k, n) in zip(plans, shapes, strict=True)
    ]
    sizes = [multiple if 2 * multiple <= cap else 1 for cap in caps]
    budget = ratio * sum(k * n for k, n in shapes)
    budget -= sum(size * (k + n) for size, (k, n) in zip(sizes, shapes, strict=True))
    costs = [
        -_block_gains(plan.decomposition, weight, cap, size)
        for plan, weight, cap, size in zip(plans, weights, caps, sizes, strict=True)
    ]
    prices = [size * (k + n) for size, (k, n) in zip(sizes, shapes, strict=True)]
    taken = allocate(costs, prices, budget)
    ranks = [size + count * size for size, count in zip(sizes, taken, strict=True)]
    return [rank if rank < cap else cap + 1 for rank, cap in zip(ranks, caps, strict=True)]


def _block_gains(d: Decomposition, weight: float, cap: int, size: int) -> np.ndarray:
    """Weighted share of error removed per parameter by each block of `size` values past the first.

    Singular values come sorted, so the blocks gain less and less: taking the best first keeps
    every layer's kept values a leading run.
    """
    k, n = d.weight.shape
    share = weight / max(d.energy, 1e-300) / (k + n)
    gains = d.s[:cap].astype(np.float64) ** 2 * share
    blocks = [
        float(np.sum(gains[first : first + size])) / size
        for first in range(size, cap - size + 1, size)
    ]
    return np.array(blocks)
