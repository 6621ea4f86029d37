"""Importance scores and pruning masks for prune-sparsify; plain numpy, no graphs.

A weight is `W [k, n]` (input channels by outputs). Scores are `|W|` (magnitude) or
`|W| * ||x_i||` (activation: each input row scaled by the calibration norm of its input channel,
as Wanda does). A mask is a boolean array of W's shape, True where a weight is kept.

Groups (FFN neurons, attention heads) are scored by what they contribute to the layer that reads
them, `W_g` being the rows of group g in that layer's weight and `G_gg` the calibration Gram of
those input channels: magnitude `||W_up[:, g]|| * ||W_g||`, activation `tr(W_g^T G_gg W_g)`
(the energy the group puts into the layer's output, the group form of Wanda's score).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nlpress.passes.compress.allocate import allocate as shared_allocate
from nlpress.passes.compress.allocate import step_sums


def scores(weight: np.ndarray, norms: np.ndarray | None) -> np.ndarray:
    """|W|, each input row scaled by its channel norm when `norms` is given."""
    magnitude = np.abs(np.asarray(weight, np.float64))
    return magnitude if norms is None else magnitude * norms[:, None]


def per_output_mask(score: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep the highest scores of each output column; prune round(sparsity * k) per column."""
    k = score.shape[0]
    pruned = round(sparsity * k)
    mask = np.ones(score.shape, dtype=bool)
    if pruned == 0:
        return mask
    lowest = np.argsort(score, axis=0, kind="stable")[:pruned]
    np.put_along_axis(mask, lowest, False, axis=0)
    return mask


def global_masks(layer_scores: Sequence[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """Prune the round(sparsity * total) lowest scores over all layers together."""
    flat = np.concatenate([s.reshape(-1) for s in layer_scores])
    pruned = round(sparsity * flat.size)
    keep = np.ones(flat.size, dtype=bool)
    if pruned:
        keep[np.argsort(flat, kind="stable")[:pruned]] = False
    masks, start = [], 0
    for s in layer_scores:
        masks.append(keep[start : start + s.size].reshape(s.shape))
        start += s.size
    return masks


def n_m_mask(score: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep exactly the `n` highest of every `m` consecutive input weights of each output."""
    k, cols = score.shape
    blocks = score.reshape(k // m, m, cols)
    lowest = np.argsort(blocks, axis=1, kind="stable")[:, : m - n]
    mask = np.ones(blocks.shape, dtype=bool)
    np.put_along_axis(mask, lowest, False, axis=1)
    return mask.reshape(k, cols)


def satisfies_n_m(weight: np.ndarray, n: int, m: int) -> bool:
    """Whether every `m` consecutive input weights of each output hold at most `n` nonzeros."""
    k, cols = weight.shape
    if k % m:
        return False
    nonzero = np.count_nonzero(weight.reshape(k // m, m, cols), axis=1)
    return bool(np.all(nonzero <= n))


def group_scores(
    consumer: np.ndarray,
    groups: int,
    gram: np.ndarray | None,
    producers: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """One score per group of consecutive input rows of `consumer` (see the module docstring).

    Args:
        consumer: The weight `[groups * size, n]` that reads the groups.
        groups: The number of groups (rows split evenly).
        gram: The calibration Gram of the consumer's input (`[k, k]` or augmented), for the
            activation criterion; None for magnitude.
        producers: Weights `[k_p, groups * size_p]` whose columns write the groups (magnitude).
    """
    size = consumer.shape[0] // groups
    rows = np.asarray(consumer, np.float64).reshape(groups, size, -1)
    if gram is not None:
        index = np.arange(groups)[:, None] * size + np.arange(size)[None, :]
        blocks = gram[index[:, :, None], index[:, None, :]]
        return np.asarray(np.einsum("gsn,gst,gtn->g", rows, blocks, rows))
    result = np.sqrt(np.sum(rows**2, axis=(1, 2)))
    for weight in producers:
        cols = np.asarray(weight, np.float64).reshape(weight.shape[0], groups, -1)
        result = result * np.sqrt(np.sum(cols**2, axis=(0, 2)))
    return np.asarray(result)


def kept_groups(score: np.ndarray, keep: int) -> np.ndarray:
    """The indices of the `keep` highest-scoring groups, in ascending order."""
    order = np.argsort(-score, kind="stable")[:keep]
    return np.sort(order)


def group_rows(kept: np.ndarray, size: int) -> np.ndarray:
    """The row indices of the kept groups of `size` consecutive rows."""
    return (kept[:, None] * size + np.arange(size)[None, :]).reshape(-1)


def greedy_groups(
    gram: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    groups: int,
    keep: int,
    damping: float,
    rhs: np.ndarray | None = None,
) -> np.ndarray:
    """The `keep` groups whose removal a refit compensates best (optimal brain surgeon, greedy).

    With H = G + lambda (the damped augmented Gram; the bias row is never removed) and S the
    current refit [W; b], removing group g costs tr(S_g^T (H^-1)_gg^-1 S_g) more output error;
    the cheapest group goes, S and H^-1 are updated in closed form, and so on. With `rhs`
    (C [W; b] + D, for a student fitted to its teacher, see `recovery`) the refit starts at
    H^-1 rhs instead of [W; b].
    """
    removed, _ = greedy_removals(gram, weight, bias, groups, groups - keep, damping, rhs)
    return np.setdiff1d(np.arange(groups), removed)


def greedy_removals(
    gram: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    groups: int,
    count: int,
    damping: float,
    rhs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` groups `greedy_groups` removes, in order, and what each removal cost.

    Costs are in the units of the Gram (sum of squared output errors over calibration rows).
    """
    k = weight.shape[0]
    size = k // groups
    hessian = np.array(gram, np.float64)
    ridge = damping * float(np.mean(np.diag(hessian)[:k]))
    hessian[np.arange(k), np.arange(k)] += ridge
    inverse = np.linalg.inv(hessian)
    bias_row = np.zeros(weight.shape[1]) if bias is None else bias
    current = np.vstack([np.asarray(weight, np.float64), bias_row])
    if rhs is not None:
        current = inverse @ rhs
    alive = np.arange(groups)
    removed: list[int] = []
    costs: list[float] = []
    while len(removed) < count and len(alive) > 1:
        group_costs = _removal_costs(inverse, current, alive, size)
        best = int(np.argmin(group_costs))
        g = int(alive[best])
        removed.append(g)
        costs.append(float(group_costs[best]))
        alive = alive[alive != g]
        rows = slice(g * size, (g + 1) * size)
        block = np.linalg.inv(inverse[rows, rows])
        current -= inverse[:, rows] @ (block @ current[rows])
        inverse -= inverse[:, rows] @ (block @ inverse[rows, :])
    return np.array(removed, dtype=np.int64), np.array(costs)


def allocate(
    curves: Sequence[np.ndarray], total: int, limits: Sequence[int], step: int = 1
) -> list[int]:
    """How many groups each unit removes: `total` in all, cheapest marginal cost first.

    `curves[u]` holds unit u's successive removal costs (already normalized to be comparable
    across units); unit u removes at most `limits[u]` (and at most `len(curves[u])`). Removals
    go `step` at a time (a step costs the sum of its removals; `total` and the counts are then
    multiples of `step`, rounded down), through the shared allocator (`compress.allocate`).
    """
    costs = [step_sums(curve, limit, step) for curve, limit in zip(curves, limits, strict=True)]
    taken = shared_allocate(costs, [1.0] * len(costs), float(total // step))
    return [count * step for count in taken]


def interpolated_costs(removals: Sequence[int], losses: Sequence[float]) -> np.ndarray:
    """Per-group removal costs from losses measured after removing `removals[i]` groups.

    The loss is taken as piecewise linear through (0, 0) and the measured points, with each
    segment's slope raised to at least the one before (convex, so that cheapest-first allocation
    takes the segments in order); the curve ends at the last measured removal.
    """
    costs: list[float] = []
    done, loss, slope = 0, 0.0, 0.0
    for count, measured in sorted(zip(removals, losses, strict=True)):
        if count <= done:
            continue
        slope = max(slope, (measured - loss) / (count - done))
        costs += [slope] * (count - done)
        loss += slope * (count - done)
        done = count
    return np.asarray(costs)


def _removal_costs(
    inverse: np.ndarray, current: np.ndarray, alive: np.ndarray, size: int
) -> np.ndarray:
    """tr(S_g^T (H^-1)_gg^-1 S_g) for every alive group g."""
    if size == 1:
        return np.asarray(np.sum(current[alive] ** 2, axis=1) / inverse[alive, alive])
    costs = np.empty(len(alive))
    for i, g in enumerate(alive):
        rows = slice(int(g) * size, (int(g) + 1) * size)
        block = np.linalg.inv(inverse[rows, rows])
        costs[i] = float(np.sum(current[rows] * (block @ current[rows])))
    return costs
