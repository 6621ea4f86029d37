"""Second moments of layer inputs on calibration data: one Gram type, one accumulator.

A linear layer y = x W + b is fitted on the augmented rows x~ = [x, 1]. Its statistics are the
Gram G = sum x~^T x~ of its input; when the layer sees a compressed model's inputs x_s instead
of its teacher's x_t (sequential fitting), also C = sum x~_s^T x~_t and G_t = sum x~_t^T x~_t;
when its output joins a residual stream r, D = sum x~_s^T d and F = sum x~_t^T d with
d = r_t - r_s, and sum ||d||^2 (`recovery.py` uses them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.passes.calibration import (
    activations,
    as_rows,
    paired_activations,
    token_rows,
    truncated_activations,
)

# Rows buffered before one product; 1 sums every batch on its own.
FLUSH_ROWS = 4096


@dataclass(frozen=True)
class Grams:
    """Augmented second moments of one layer input in a student and its teacher.

    Attributes:
        student: G_s = sum [x_s, 1]^T [x_s, 1] (the only Gram when x_s = x_t).
        cross: C = sum [x_s, 1]^T [x_t, 1]; None when x_s = x_t.
        teacher: G_t = sum [x_t, 1]^T [x_t, 1]; None when x_s = x_t.
        shift: D = sum [x_s, 1]^T (r_t - r_s) for a layer added to a residual stream r.
        shift_teacher: F = sum [x_t, 1]^T (r_t - r_s).
        shift_energy: sum ||r_t - r_s||^2.
    """

    student: np.ndarray
    cross: np.ndarray | None = None
    teacher: np.ndarray | None = None
    shift: np.ndarray | None = None
    shift_teacher: np.ndarray | None = None
    shift_energy: float = 0.0

    @property
    def target(self) -> np.ndarray:
        """The Gram of the inputs the teacher's outputs are computed on."""
        return self.student if self.teacher is None else self.teacher

    @property
    def mixed(self) -> np.ndarray:
        """student^T teacher (the student's own Gram when they are the same)."""
        return self.student if self.cross is None else self.cross

    def rhs(self, target: np.ndarray) -> np.ndarray:
        """C T + D: the right-hand side of the refit for the target T = [W; b]."""
        value = np.asarray(self.mixed @ target)
        return value if self.shift is None else np.asarray(value + self.shift)


def with_ones(rows: np.ndarray) -> np.ndarray:
    """Rows x as augmented rows [x, 1]."""
    return np.hstack([rows, np.ones((rows.shape[0], 1))])


def augmented_weight(weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """T = [W; b] in float64 (a zero bias row for a layer without bias): [x, 1] T = x W + b."""
    bias_row = np.zeros(weight.shape[1]) if bias is None else np.asarray(bias, np.float64)
    return np.vstack([np.asarray(weight, np.float64), bias_row])


@dataclass
class GramSum:
    """Sums the Grams of one input over batches of rows, buffering rows for few large products.

    With `augment` rows are taken as [x, 1]; with `diagonal` only sum x^2 per channel is kept.
    Teacher rows and residual shifts, when added, fill the paired Grams.
    """

    augment: bool = True
    diagonal: bool = False
    flush_rows: int = FLUSH_ROWS
    rows: list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = field(
        default_factory=list
    )
    buffered: int = 0
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    shift_energy: float = 0.0

    def add(
        self,
        student: np.ndarray,
        teacher: np.ndarray | None = None,
        shift: np.ndarray | None = None,
    ) -> None:
        """Add one batch of rows (and the teacher's rows and residual shift for them)."""
        self.rows.append((student, teacher, shift))
        self.buffered += student.shape[0]
        if self.buffered >= self.flush_rows:
            self._flush()

    def grams(self) -> Grams:
        """The Grams of every row added."""
        self._flush()
        if "student" not in self.sums:
            raise ValueError("no calibration rows")
        s = self.sums
        return Grams(
            s["student"],
            s.get("cross"),
            s.get("teacher"),
            s.get("shift"),
            s.get("shift_teacher"),
            self.shift_energy,
        )

    def total(self) -> np.ndarray:
        """The student's Gram (or channel energies), empty when no row was added."""
        self._flush()
        return self.sums.get("student", np.zeros(0))

    def _flush(self) -> None:
        if not self.rows:
            return
        x_s = self._stack([s for s, _, _ in self.rows])
        teachers = [t for _, t, _ in self.rows if t is not None]
        shifts = [d for _, _, d in self.rows if d is not None]
        self.rows, self.buffered = [], 0
        if self.diagonal:
            self._accumulate({"student": np.sum(x_s**2, axis=0)})
            return
        parts = {"student": x_s.T @ x_s}
        if teachers:
            x_t = self._stack(teachers)
            parts.update({"cross": x_s.T @ x_t, "teacher": x_t.T @ x_t})
            if shifts:
                d = np.vstack(shifts).astype(np.float64)
                parts.update({"shift": x_s.T @ d, "shift_teacher": x_t.T @ d})
                self.shift_energy += float(np.sum(d**2))
        self._accumulate(parts)

    def _stack(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        x = np.vstack(rows)
        return with_ones(x.astype(np.float64)) if self.augment and not self.diagonal else x

    def _accumulate(self, parts: dict[str, np.ndarray]) -> None:
        for key, part in parts.items():
            self.sums[key] = part if key not in self.sums else self.sums[key] + part


def second_moments(
    model: Model,
    tensors: Sequence[gs.Tensor],
    feeds: Sequence[Feeds],
    augment: bool = False,
    tokens_only: bool = False,
) -> list[np.ndarray]:
    """X^T X of each tensor ([k, k], or [k+1, k+1] over [x, 1] with `augment`), batch by batch.

    Every position counts, or with `tokens_only` the real tokens only (`calibration.token_rows`).
    """
    if not feeds:
        return []
    sums = [GramSum(augment=augment, flush_rows=1) for _ in tensors]
    for values, batch in zip(activations(model, tensors, feeds), feeds, strict=True):
        for total, value in zip(sums, values, strict=True):
            total.add(token_rows(value, batch) if tokens_only else as_rows(value))
    return [total.total() for total in sums]


def channel_norms(
    model: Model, tensors: Sequence[gs.Tensor], feeds: Sequence[Feeds]
) -> list[np.ndarray]:
    """The L2 norm of each input channel over all positions, per tensor ([k] each)."""
    return [np.sqrt(np.diag(g)) for g in second_moments(model, tensors, feeds)]


def token_input_grams(
    model: Model, inputs: Sequence[gs.Tensor], feeds: Sequence[Feeds]
) -> list[np.ndarray]:
    """The augmented Gram sum [x, 1]^T [x, 1] of each tensor over the real tokens.

    Padding rows are not what the layer sees on real text, and the many identical rows of a
    padded batch would pull whitening and recovery towards them.
    """
    return second_moments(model, inputs, feeds, augment=True, tokens_only=True)


TeacherRows = dict[str, list[np.ndarray]]


def paired_grams(
    student: Model,
    teacher: Model | TeacherRows,
    names: Sequence[str],
    feeds: Sequence[Feeds],
    residuals: Sequence[str | None] = (),
    flush_rows: int = FLUSH_ROWS,
) -> list[Grams]:
    """(G_s, C, G_t) of each tensor named in `names`, over the real-token positions of `feeds`.

    The teacher is a model (run alongside the student, both cut down to what computes the
    tensors) or its rows collected once beforehand (`teacher_rows`). `residuals[i]`, where
    given, names the residual stream that layer i's output is added to; its student/teacher
    difference fills the `shift` fields.
    """
    extra = [r for r in dict.fromkeys(residuals) if r is not None and r not in names]
    every = [*names, *extra]
    sums = [GramSum(flush_rows=flush_rows) for _ in names]
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
    return [total.grams() for total in sums]


def _cached(rows: TeacherRows, names: Sequence[str]) -> Iterator[list[np.ndarray]]:
    """Cached teacher rows per batch, shaped as rows (token_rows keeps them as they are)."""
    for index in range(len(rows[names[0]])):
        yield [rows[name][index] for name in names]


def teacher_rows(teacher: Model, names: Sequence[str], feeds: Sequence[Feeds]) -> TeacherRows:
    """The real-token rows of each tensor named in `names`, per batch, in float32."""
    rows: TeacherRows = {name: [] for name in names}
    for values, batch in zip(truncated_activations(teacher, names, feeds), feeds, strict=True):
        for name, value in zip(names, values, strict=True):
            rows[name].append(token_rows(value, batch).astype(np.float32))
    return rows
