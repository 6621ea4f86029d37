"""Factors of one layer: decompose W (or R W, whitened), cut at a rank, refit the second factor.

With W = A S B (SVD), the factors at rank r are U = A_r S_r^1/2 and V = S_r^1/2 B_r, split evenly
so neither has a much larger range than the other. `activation` whitens first: with C the
second moment of the layer's calibration inputs and R = (C + lambda I)^1/2, ||X (W - W')||_F =
||R (W - W')||_F, so the best rank-r W' is R^-1 (R W)_r. Recovery keeps U and refits V and the
bias by ridge regression to the unfactorized layer's outputs (`passes.recovery.refit`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from nlpress.passes.base import PreconditionError
from nlpress.passes.compress.grams import Grams
from nlpress.passes.factorize_matmul.ranks import RANK_RULES, round_rank, useful_rank_limit
from nlpress.passes.recovery import refit

PASS = "factorize-matmul"
_OVERSAMPLE = 10
_POWER_ITERATIONS = 2


@dataclass(frozen=True)
class Settings:
    """The resolved options the fitting reads.

    Attributes:
        method: svd, randomized or activation.
        rule: The rank option in force (a key of `RANK_RULES`) and its value.
        rank_multiple: Chosen ranks are rounded to a multiple of this.
        recover: Whether the second factor and the bias are refitted.
        damping: Ridge strength, relative to the mean diagonal of the Gram.
        seed: Seed of the randomized sketch.
        uniform: Whether each layer takes the rank its rule gives (no global allocation).
    """

    method: str
    rule: tuple[str, float]
    rank_multiple: int
    recover: bool
    damping: float
    seed: int
    uniform: bool


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


def decompose(
    settings: Settings, weight: np.ndarray, bias: np.ndarray | None, grams: Grams | None
) -> Decomposition:
    """The singular triplets of W (or of R W, whitened) that the factors are cut from."""
    gram = None if grams is None else grams.student
    whitening = None
    if settings.method == "activation":
        if gram is None:
            raise PreconditionError(f"{PASS}: method=activation needs calibration data")
        whitening = whiteners(gram[:-1, :-1], settings.damping)
    target = weight if whitening is None else whitening[0] @ weight
    k, n = weight.shape
    cap = max(1, useful_rank_limit(k, n) - 1)
    if settings.method == "randomized":
        option, value = settings.rule
        rule = RANK_RULES[option]
        if settings.uniform and rule.from_shape and rule.rank is not None:
            rank = min(cap + 1, rule.rank(value, k, n, np.zeros(0), 0.0))
        else:
            rank = cap
        u, s, vt = randomized_svd(target, rank, settings.seed)
    else:
        u, s, vt = np.linalg.svd(target, full_matrices=False)
    energy = float(np.sum(target * target))
    return Decomposition(u, s, vt, energy, whitening, weight, bias, grams)


def fit(settings: Settings, d: Decomposition, rank: int | None = None) -> Fit:
    """The factors at `rank`, or at the rank the settings' rule selects."""
    if rank is not None:
        return fit_at(settings, d, rank)
    option, value = settings.rule
    rule = RANK_RULES[option]
    if rule.rank is None:
        found = _search(settings, d, value)
        return _rounded(settings, d, found, up=rule.rounds_up)
    k, n = d.weight.shape
    chosen = rule.rank(value, k, n, d.s, d.energy)
    return fit_at(settings, d, round_rank(chosen, settings.rank_multiple, rule.rounds_up))


def fit_at(settings: Settings, d: Decomposition, rank: int) -> Fit:
    """The factors cut at `rank` (refitted with `recover`)."""
    rank = max(1, min(rank, len(d.s)))
    root = np.sqrt(d.s[:rank])
    first = d.u[:, :rank] * root
    if d.whitening is not None:
        first = d.whitening[1] @ first
    second = root[:, None] * d.vt[:rank]
    offset = d.bias
    if settings.recover:
        if d.grams is None:
            raise PreconditionError(f"{PASS}: recover=true needs calibration data")
        gram, cross = _bias_grams(d.grams, d.bias)
        second, fitted = refit(gram, first, d.weight, d.bias, settings.damping, cross)
        offset = None if d.bias is None else fitted
    return Fit(rank, first, second, offset)


def _rounded(settings: Settings, d: Decomposition, found: Fit, *, up: bool) -> Fit:
    rank = round_rank(found.rank, settings.rank_multiple, up)
    if rank == found.rank:
        return found
    if rank >= useful_rank_limit(*d.weight.shape):
        return replace(found, rank=rank)  # no gain left: the layer stays dense
    return fit_at(settings, d, rank)


def _search(settings: Settings, d: Decomposition, budget: float) -> Fit:
    """The smallest rank whose outputs keep cosine `budget` with the layer's, by bisection."""
    if d.grams is None:
        raise PreconditionError(f"{PASS}: layer-cosine needs calibration data")
    k, n = d.weight.shape
    low, high = 1, min(len(d.s), max(1, useful_rank_limit(k, n) - 1))
    best = fit_at(settings, d, high)
    if fit_cosine(d.grams, best, d.weight, d.bias) < budget:
        # Not even the largest rank that saves anything meets the budget.
        return replace(best, rank=high + 1)
    while low < high:
        middle = (low + high) // 2
        candidate = fit_at(settings, d, middle)
        if fit_cosine(d.grams, candidate, d.weight, d.bias) >= budget:
            best, high = candidate, middle
        else:
            low = middle + 1
    return best


def randomized_svd(
    matrix: np.ndarray, rank: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The leading `rank` singular triplets of `matrix` by a seeded randomized range finder.

    Halko, Martinsson and Tropp (2011): a Gaussian sketch of rank + 10 columns, two power
    iterations, QR, then an exact SVD of the small projected matrix.
    """
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
