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
with S' = P~ S and G_t = sum x~_t^T x~_t. `paired_grams` collects (G_s, C, G_t) in one run of
the truncated student and teacher; with x_s = x_t they are all G and every formula above
reduces to the one-model form.

Residual correction: when the layer's output is added to a residual stream (y + r, as the
output projections of a transformer block are), the student's sum should match the teacher's,
x_s S + r_s ~ x_t T + r_t, so the layer's target becomes x~_t T + d with d = r_t - r_s: the layer
also takes out the error that the residual stream carries in. The right-hand side gains
D = sum x~_s^T d, and the error's numerator gains 2 tr(T^T F) + sum ||d||^2 - 2 tr(S'^T D)
with F = sum x~_t^T d (`PairedGrams.shift*`; all zero without a residual).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Model
from nlpress.passes.calibration import (
    Feeds,
    activations,
    paired_activations,
    second_moments,
    token_rows,
    truncated_activations,
)

DEFAULT_DAMPING = 1e-2


def input_grams(
    model: Model, inputs: Sequence[gs.Tensor], feeds: Sequence[Feeds]
) -> list[np.ndarray]:
    """The augmented Gram sum [x, 1]^T [x, 1] of each tensor over all calibration positions."""
    return second_moments(model, inputs, feeds, augment=True)


def token_input_grams(
    model: Model, inputs: Sequence[gs.Tensor], feeds: Sequence[Feeds]
) -> list[np.ndarray]:
    """`input_grams` over the real tokens only: padding positions (attention mask 0) left out.

    Padding rows are not what the layer sees on real text, and the many identical rows of a
    padded batch would pull whitening and recovery towards them. Activations whose leading dims
    are not [batch, sequence] keep every row (see `calibration.token_rows`).
    """
    grams: list[np.ndarray] = []
    for values, batch in zip(activations(model, inputs, feeds), feeds, strict=True):
        rows = [token_rows(v, batch) for v in values]
        rows = [np.hstack([r, np.ones((r.shape[0], 1))]) for r in rows]
        if not grams:
            grams = [np.zeros((r.shape[1], r.shape[1])) for r in rows]
        for gram, r in zip(grams, rows, strict=True):
            gram += r.T @ r
    return grams


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
    rhs = cross @ _target(weight, bias)
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


@dataclass
class PairedGrams:
    """Augmented second moments of one layer input in a student and its teacher.

    Attributes:
        student: G_s = sum [x_s, 1]^T [x_s, 1].
        cross: C = sum [x_s, 1]^T [x_t, 1].
        teacher: G_t = sum [x_t, 1]^T [x_t, 1].
        shift: D = sum [x_s, 1]^T (r_t - r_s) for a layer added to a residual stream r.
        shift_teacher: F = sum [x_t, 1]^T (r_t - r_s).
        shift_energy: sum ||r_t - r_s||^2.
    """

    student: np.ndarray
    cross: np.ndarray
    teacher: np.ndarray
    shift: np.ndarray | None = None
    shift_teacher: np.ndarray | None = None
    shift_energy: float = 0.0

    def rhs(self, target: np.ndarray) -> np.ndarray:
        """C T + D: the right-hand side of the refit for the target T = [W; b]."""
        value = np.asarray(self.cross @ target)
        return value if self.shift is None else np.asarray(value + self.shift)

    @classmethod
    def single(cls, gram: np.ndarray) -> PairedGrams:
        """The grams of a layer whose student input is the teacher's (x_s = x_t)."""
        return cls(gram, gram, gram)


def paired_grams(
    student: Model,
    teacher: Model | TeacherRows,
    names: Sequence[str],
    feeds: Sequence[Feeds],
    residuals: Sequence[str | None] = (),
) -> list[PairedGrams]:
    """(G_s, C, G_t) of each tensor named in `names`, over the real-token positions of `feeds`.

    The teacher is a model (run alongside the student) or its rows collected once beforehand
    (`teacher_rows`), which saves running it again for every stage of a sequential recovery.
    `residuals[i]`, where given, names the residual stream that layer i's output is added to;
    its student/teacher difference fills the `shift` fields.
    """
    extra = [r for r in dict.fromkeys(residuals) if r is not None and r not in names]
    every = [*names, *extra]
    sums = [_PairedSum() for _ in names]
    if isinstance(teacher, Model):
        pairs = paired_activations(student, teacher, every, feeds)
    else:
        pairs = zip(
            truncated_activations(student, every, feeds), _cached(teacher, every), strict=True
        )
    for (values_s, values_t), batch in zip(pairs, feeds, strict=True):
        rows_s = {n: token_rows(v, batch) for n, v in zip(every, values_s, strict=True)}
        rows_t = {n: np.asarray(token_rows(v, batch)) for n, v in zip(every, values_t, strict=True)}
        for i, (total, name) in enumerate(zip(sums, names, strict=True)):
            residual = residuals[i] if i < len(residuals) else None
            shift = None if residual is None else rows_t[residual] - rows_s[residual]
            total.add(rows_s[name], rows_t[name], shift)
    return [total.result() for total in sums]


def _cached(rows: TeacherRows, names: Sequence[str]) -> Iterator[list[np.ndarray]]:
    """Cached teacher rows per batch, shaped as rows (token_rows keeps them as they are)."""
    for index in range(len(rows[names[0]])):
        yield [rows[name][index] for name in names]


TeacherRows = dict[str, list[np.ndarray]]


def teacher_rows(teacher: Model, names: Sequence[str], feeds: Sequence[Feeds]) -> TeacherRows:
    """The real-token rows of each tensor named in `names`, per batch, in float32."""
    rows: TeacherRows = {name: [] for name in names}
    for values, batch in zip(truncated_activations(teacher, names, feeds), feeds, strict=True):
        for name, value in zip(names, values, strict=True):
            rows[name].append(token_rows(value, batch).astype(np.float32))
    return rows


@dataclass
class _PairedSum:
    """Sums the three Grams, buffering rows to make few large products."""

    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = field(default_factory=list)
    buffered: int = 0
    total: list[np.ndarray] | None = None
    shifts: list[np.ndarray] | None = None
    shift_energy: float = 0.0

    def add(self, student: np.ndarray, teacher: np.ndarray, shift: np.ndarray | None) -> None:
        self.rows.append((student, teacher, shift))
        self.buffered += student.shape[0]
        if self.buffered >= 4096:
            self._flush()

    def result(self) -> PairedGrams:
        self._flush()
        if self.total is None:
            raise ValueError("paired_grams: no calibration rows")
        student, cross, teacher = self.total
        if self.shifts is None:
            return PairedGrams(student, cross, teacher)
        shift, shift_teacher = self.shifts
        return PairedGrams(student, cross, teacher, shift, shift_teacher, self.shift_energy)

    def _flush(self) -> None:
        if not self.rows:
            return
        x_s = _with_ones(np.vstack([s for s, _, _ in self.rows]).astype(np.float64))
        x_t = _with_ones(np.vstack([t for _, t, _ in self.rows]).astype(np.float64))
        shifts = [d for _, _, d in self.rows if d is not None]
        self.rows, self.buffered = [], 0
        parts = [x_s.T @ x_s, x_s.T @ x_t, x_t.T @ x_t]
        if self.total is not None:
            parts = [a + b for a, b in zip(self.total, parts, strict=True)]
        self.total = parts
        if shifts:
            d = np.vstack(shifts).astype(np.float64)
            new = [x_s.T @ d, x_t.T @ d]
            if self.shifts is not None:
                new = [a + b for a, b in zip(self.shifts, new, strict=True)]
            self.shifts = new
            self.shift_energy += float(np.sum(d**2))


def paired_output_error(
    grams: PairedGrams,
    second: np.ndarray,
    offset: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
) -> float:
    """Relative squared error of x_s @ second + offset against the teacher's x_t @ W + b."""
    target = _target(weight, bias)
    fitted = np.vstack([np.asarray(second, np.float64), offset])
    denominator = float(np.trace(target.T @ grams.teacher @ target))
    numerator = (
        float(np.sum(fitted * (grams.student @ fitted)))
        - 2.0 * float(np.sum(fitted * grams.rhs(target)))
        + denominator
        + grams.shift_energy
    )
    if grams.shift_teacher is not None:
        numerator += 2.0 * float(np.sum(target * grams.shift_teacher))
    return max(numerator, 0.0) / max(denominator, 1e-30)


def _with_ones(rows: np.ndarray) -> np.ndarray:
    return np.hstack([rows, np.ones((rows.shape[0], 1))])


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
