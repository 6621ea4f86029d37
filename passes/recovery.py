"""Teacher-guided recovery: refit a compressed linear layer to its teacher's outputs in closed form.

A linear layer computes y = x W + b (W is [k, n]); the uncompressed model is the teacher. After
compression the layer sees z = x P instead of x, where P [k, m] is what compression kept of the
input: a selection of input channels when pruning, the first factor U when factorizing. Recovery
picks the second half of the layer, B [m, n] and c [n], to match the teacher on calibration data:

    min_{B, c}  sum over calibration positions ||z B + c - (x W + b)||^2  +  lambda ||B||^2

With augmented rows x~ = [x, 1], P~ = blockdiag(P, 1), T = [W; b] and the calibration Gram
G = sum x~^T x~, this is ridge regression with the closed-form solution

    [B; c] = (P~^T G P~ + Lambda)^-1  P~^T G T,

where Lambda is lambda on the diagonal of the first m rows (the bias is not damped), and lambda is
`damping` times the mean diagonal of P~^T G P~. Only G ([k+1, k+1] per layer) is collected, so
recovery costs one calibration run for all layers. It is knowledge distillation done layer by
layer: each layer is fitted to what the teacher's layer outputs on the teacher's own inputs.

The relative output error of any (P, B, c) follows from the same Gram:
    E = tr((P~ S - T)^T G (P~ S - T)) / tr(T^T G T),  with S = [B; c].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Model
from nlpress.passes.calibration import Feeds, second_moments

DEFAULT_DAMPING = 1e-2


def input_grams(
    model: Model, inputs: Sequence[gs.Tensor], feeds: Sequence[Feeds]
) -> list[np.ndarray]:
    """The augmented Gram sum [x, 1]^T [x, 1] of each tensor over all calibration positions."""
    return second_moments(model, inputs, feeds, augment=True)


def refit(
    gram: np.ndarray,
    projection: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    damping: float = DEFAULT_DAMPING,
    cross: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ridge-optimal (B [m, n], c [n]) for a layer whose input became x @ projection.

    `cross` is the Gram [x_s, 1]^T [x_t, 1] between the compressed model's inputs x_s to this
    layer (then `gram` is theirs) and the teacher's x_t, for sequential recovery, where earlier
    layers are compressed already and the layer is fitted to the teacher's outputs on the
    teacher's inputs: the right-hand side becomes P~^T cross T. By default x_s = x_t.
    """
    p_aug = _augment_projection(projection)
    target = _target(weight, bias)
    lhs = p_aug.T @ gram @ p_aug
    m = projection.shape[1]
    ridge = damping * float(np.mean(np.diag(lhs)[:m])) if m else 0.0
    lhs[np.arange(m), np.arange(m)] += ridge
    solution = np.linalg.solve(lhs, p_aug.T @ (gram if cross is None else cross) @ target)
    return solution[:m], solution[m]


def output_error(
    gram: np.ndarray,
    projection: np.ndarray,
    second: np.ndarray,
    offset: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
) -> float:
    """Relative squared output error of x @ projection @ second + offset against x @ W + b."""
    target = _target(weight, bias)
    residual = _augment_projection(projection) @ np.vstack([second, offset]) - target
    denominator = float(np.trace(target.T @ gram @ target))
    return float(np.trace(residual.T @ gram @ residual)) / max(denominator, 1e-30)


def refit_masked(
    gram: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    mask: np.ndarray,
    damping: float = DEFAULT_DAMPING,
    fit_bias: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The ridge-optimal (W' [k, n], c [n]) when output j may only read the inputs `mask[:, j]`.

    Each output column is `refit` on its own: projection = selection(kept inputs of column j),
    target = column j of [W; b]. Columns that keep the same inputs share one solve; pruned
    weights stay exactly zero. Without `fit_bias` the offset is held at zero (for a layer that
    has no bias to put it in).
    """
    k, n = weight.shape
    rhs = gram @ _target(weight, bias)
    second, offset = np.zeros((k, n)), np.zeros(n)
    keys = np.packbits(np.asarray(mask, bool), axis=0).T
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    for group, column in enumerate(first):
        columns = np.flatnonzero(inverse.reshape(-1) == group)
        rows = np.flatnonzero(mask[:, column])
        rows = np.append(rows, k) if fit_bias else rows
        if not len(rows):
            continue
        lhs = gram[np.ix_(rows, rows)]
        m = len(rows) - 1 if fit_bias else len(rows)
        ridge = damping * float(np.mean(np.diag(lhs)[:m])) if m else 0.0
        lhs[np.arange(m), np.arange(m)] += ridge
        solution = np.linalg.solve(lhs, rhs[np.ix_(rows, columns)])
        second[np.ix_(rows[:m], columns)] = solution[:m]
        offset[columns] = solution[m] if fit_bias else 0.0
    return second, offset


def selection(kept: np.ndarray, size: int) -> np.ndarray:
    """The projection [size, len(kept)] that keeps input channels `kept`."""
    matrix = np.zeros((size, len(kept)))
    matrix[kept, np.arange(len(kept))] = 1.0
    return matrix


def _augment_projection(projection: np.ndarray) -> np.ndarray:
    k, m = projection.shape
    p_aug = np.zeros((k + 1, m + 1))
    p_aug[:k, :m] = projection
    p_aug[k, m] = 1.0
    return p_aug


def _target(weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    bias_row = np.zeros(weight.shape[1]) if bias is None else np.asarray(bias, np.float64)
    return np.vstack([np.asarray(weight, np.float64), bias_row])
