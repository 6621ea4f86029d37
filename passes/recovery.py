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

Sequential (error-correcting) recovery: compressing layers one after another in graph order,
layer l of the compressed model (the student) no longer sees the teacher's input x_t but its own
x_s, which carries the error left by every layer compressed before it. Fitting the student's
layer on x_s to the teacher's outputs x_t W + b corrects that accumulated error as far as the
layer can:

    min_{B, c}  sum ||x~_s P~ S - x~_t T||^2 + lambda ||B||^2
    =>  S = (P~^T G_s P~ + Lambda)^-1 P~^T C T,   G_s = sum x~_s^T x~_s,  C = sum x~_s^T x~_t,

and the relative error is E = (tr(S'^T G_s S') - 2 tr(S'^T C T) + tr(T^T G_t T)) / tr(T^T G_t T)
with S' = P~ S and G_t = sum x~_t^T x~_t. `compress.grams.paired_grams` collects (G_s, C, G_t)
in one run of the truncated student and teacher; with x_s = x_t they are all G and every
formula above reduces to the one-model form.

Residual correction: when the layer's output is added to a residual stream (y + r, as the
output projections of a transformer block are), the student's sum should match the teacher's,
x_s S + r_s ~ x_t T + r_t, so the layer's target becomes x~_t T + d with d = r_t - r_s: the layer
also takes out the error that the residual stream carries in. The right-hand side gains
D = sum x~_s^T d, and the error's numerator gains 2 tr(T^T F) + sum ||d||^2 - 2 tr(S'^T D)
with F = sum x~_t^T d (`Grams.shift*`; all zero without a residual).
"""

from __future__ import annotations

import numpy as np

from nlpress.passes.compress.grams import Grams, augmented_weight

DEFAULT_DAMPING = 1e-2


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
    target = augmented_weight(weight, bias)
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
    target = augmented_weight(weight, bias)
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
    return refit_masked_paired(gram, gram, weight, bias, mask, damping, fit_bias)


def refit_masked_paired(
    gram: np.ndarray,
    cross: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    mask: np.ndarray,
    damping: float = DEFAULT_DAMPING,
    fit_bias: bool = True,
    shift: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`refit_masked` on the student's inputs (`gram` = G_s) against the teacher's outputs.

    `cross` is C = sum [x_s, 1]^T [x_t, 1]; with `cross` = `gram` this is `refit_masked`.
    `shift` is D (see the module docstring), for a layer that feeds a residual stream.
    """
    k, n = weight.shape
    rhs = cross @ augmented_weight(weight, bias)
    if shift is not None:
        rhs = rhs + shift
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


def paired_output_error(
    grams: Grams,
    second: np.ndarray,
    offset: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
) -> float:
    """Relative squared error of x_s @ second + offset against the teacher's x_t @ W + b."""
    target = augmented_weight(weight, bias)
    fitted = np.vstack([np.asarray(second, np.float64), offset])
    denominator = float(np.trace(target.T @ grams.target @ target))
    numerator = (
        float(np.sum(fitted * (grams.student @ fitted)))
        - 2.0 * float(np.sum(fitted * grams.rhs(target)))
        + denominator
        + grams.shift_energy
    )
    if grams.shift_teacher is not None:
        numerator += 2.0 * float(np.sum(target * grams.shift_teacher))
    return max(numerator, 0.0) / max(denominator, 1e-30)


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
