"""prune-sparsify's sequential recovery and global and measured allocation, on two stacked FFNs."""

import dataclasses

import numpy as np
import pytest
from graphs import ffn, weights

from nlpress.ir import Feeds, Model
from nlpress.ir.verify import check, run
from nlpress.passes.compress.grams import Grams, paired_grams
from nlpress.passes.prune_patterns import allocate, interpolated_costs
from nlpress.passes.prune_sparsify import PruneSparsify
from nlpress.passes.recovery import (
    paired_output_error,
    refit_masked,
    refit_masked_paired,
)

HIDDEN, INNER, ROWS = 8, 16, 24


def _two_ffns(second_scale: float = 1.0, residual: bool = False) -> tuple[Model, tuple[Feeds, ...]]:
    """x -> [up -> Relu -> down] x 2 -> y, with biases (and residuals), and twelve batches."""
    blocks = [
        (
            weights([HIDDEN, INNER], 10 * i),
            weights([INNER], 10 * i + 1) * 0.1,
            weights([INNER, HIDDEN], 10 * i + 2) * (second_scale if i == 2 else 1.0) / 4,
            weights([HIDDEN], 10 * i + 3) * 0.1,
        )
        for i in (1, 2)
    ]
    m = ffn([ROWS, HIDDEN], blocks, residual=residual)
    rng = np.random.default_rng(5)
    feeds = tuple({"x": rng.standard_normal((ROWS, HIDDEN)).astype(np.float32)} for _ in range(12))
    return m, feeds


def _error(teacher: Model, student: Model, feeds: tuple[Feeds, ...]) -> float:
    want = np.concatenate([run(teacher, f)["y"] for f in feeds])
    got = np.concatenate([run(student, f)["y"] for f in feeds])
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _widths(m: Model) -> dict[str, int]:
    downs = [n for n in m.graph.nodes if n.name in ("down1", "down2")]
    return {n.name: int(n.inputs[1].values.shape[0]) for n in downs}


@pytest.mark.parametrize("criterion", ["activation", "obs"])
def test_sequential_refit_corrects_the_error_of_earlier_units(criterion):
    m, feeds = _two_ffns()
    options = {"pattern": "neurons", "sparsity": 0.5, "criterion": criterion}
    one_shot = PruneSparsify(**options, sequential=False).run(m, feeds)
    sequential = PruneSparsify(**options, sequential=True).run(m, feeds)
    check(sequential.model)
    first = "recovery_error_after:down1"
    assert sequential.stats[first] == pytest.approx(one_shot.stats[first])
    assert _error(m, sequential.model, feeds) < _error(m, one_shot.model, feeds)


def test_residual_correction_matches_the_teacher_after_the_residual_add():
    m, feeds = _two_ffns(residual=True)
    options = {"pattern": "neurons", "sparsity": 0.5, "criterion": "obs", "sequential": True}
    plain = PruneSparsify(**options, residual_correction=False).run(m, feeds)
    corrected = PruneSparsify(**options).run(m, feeds)
    check(corrected.model)
    assert _error(m, corrected.model, feeds) < _error(m, plain.model, feeds)


def test_sequential_weights_keep_their_masks():
    m, feeds = _two_ffns()
    result = PruneSparsify(pattern="2:4", recover=True, sequential=True).run(m, feeds)
    assert result.stats["recovery_error_after"] < result.stats["recovery_error_before"]
    zeros = [np.mean(n.inputs[1].values == 0) for n in result.model.graph.nodes if n.op == "MatMul"]
    assert zeros == [0.5] * 4


def test_global_allocation_keeps_the_total_and_prunes_the_cheap_layer_more():
    # The second FFN barely contributes: its neurons are cheap.
    m, feeds = _two_ffns(second_scale=0.05)
    result = PruneSparsify(pattern="neurons", sparsity=0.25, allocation="global").run(m, feeds)
    widths = _widths(result.model)
    assert sum(widths.values()) == round(2 * INNER * 0.75)
    assert widths["down2"] < widths["down1"]
    assert widths["down2"] >= INNER // 2  # at most twice the level
    again = PruneSparsify(pattern="neurons", sparsity=0.25, allocation="global").run(
        result.model, feeds
    )
    assert not again.changed


def test_sensitivity_allocation_prunes_what_the_output_misses_least():
    # With residuals, the second FFN adds little to y: its relative layer error is as large as
    # the first's, but the output hardly notices it.
    m, feeds = _two_ffns(second_scale=0.05, residual=True)
    options = {"pattern": "neurons", "sparsity": 0.25, "criterion": "obs"}
    measured = PruneSparsify(**options, allocation="sensitivity").run(m, feeds)
    check(measured.model)
    widths = _widths(measured.model)
    assert sum(widths.values()) == round(2 * INNER * 0.75)
    assert widths == {"down1": INNER, "down2": INNER // 2}
    uniform = PruneSparsify(**options).run(m, feeds)
    assert _error(m, measured.model, feeds) < _error(m, uniform.model, feeds)
    plain = PruneSparsify(pattern="neurons", criterion="magnitude", recover=False)
    assert not plain.needs_data
    assert dataclasses.replace(plain, allocation="sensitivity").needs_data


def test_interpolated_costs_are_convex_through_the_origin():
    costs = interpolated_costs([2, 4, 8], [0.2, 0.3, 1.1])
    # 0.05 a group from 2 to 4 is raised to 0.1 (loss 0.4 at 4), then (1.1 - 0.4) / 4
    np.testing.assert_allclose(costs, [0.1] * 4 + [0.175] * 4)
    np.testing.assert_allclose(interpolated_costs([1], [-0.01]), [0.0])
    assert interpolated_costs([], []).size == 0


def test_allocate_takes_the_cheapest_next_removal():
    curves = [np.array([1.0, 5.0, 6.0]), np.array([2.0, 3.0, 4.0])]
    assert allocate(curves, 3, [3, 3]) == [1, 2]
    assert allocate(curves, 4, [3, 1]) == [3, 1]
    assert allocate(curves, 2, [3, 3], step=2) == [0, 2]  # 2 + 3 < 1 + 5


def test_global_allocation_needs_a_structured_pattern():
    for allocation in ("global", "sensitivity"):
        with pytest.raises(ValueError, match=f"allocation={allocation} works with"):
            PruneSparsify(pattern="2:4", allocation=allocation)


# --- the closed forms ------------------------------------------------------------------------


def _student_teacher(rows=300, k=10, n=4, seed=0):
    rng = np.random.default_rng(seed)
    x_t = rng.standard_normal((rows, k)) @ rng.standard_normal((k, k)) + 0.3
    x_s = x_t + 0.2 * rng.standard_normal((rows, k))  # the teacher's input with some error
    w, b = rng.standard_normal((k, n)), rng.standard_normal(n)
    s = np.hstack([x_s, np.ones((rows, 1))])
    t = np.hstack([x_t, np.ones((rows, 1))])
    return x_s, x_t, w, b, Grams(s.T @ s, s.T @ t, t.T @ t)


def test_paired_refit_is_least_squares_of_student_inputs_on_teacher_outputs():
    x_s, x_t, w, b, grams = _student_teacher()
    mask = np.ones(w.shape, bool)
    mask[[1, 4, 7]] = False
    second, offset = refit_masked_paired(grams.student, grams.cross, w, b, mask, damping=0.0)
    kept = np.flatnonzero(mask[:, 0])
    design = np.hstack([x_s[:, kept], np.ones((len(x_s), 1))])
    expected = np.linalg.lstsq(design, x_t @ w + b, rcond=None)[0]
    np.testing.assert_allclose(second[kept], expected[:-1], atol=1e-8)
    np.testing.assert_allclose(offset, expected[-1], atol=1e-8)
    assert np.all(second[~mask] == 0)
    residual = x_s @ second + offset - (x_t @ w + b)
    want = np.sum(residual**2) / np.sum((x_t @ w + b) ** 2)
    assert paired_output_error(grams, second, offset, w, b) == pytest.approx(want, rel=1e-8)


def test_shifted_refit_fits_the_teacher_sum_through_the_residual():
    x_s, x_t, w, b, grams = _student_teacher()
    rng = np.random.default_rng(2)
    r_t = rng.standard_normal((len(x_s), w.shape[1]))
    r_s = r_t + 0.3 * rng.standard_normal(r_t.shape)
    d = r_t - r_s
    s_rows, t_rows = (
        np.hstack([x_s, np.ones((len(x_s), 1))]),
        np.hstack([x_t, np.ones((len(x_t), 1))]),
    )
    shifted = Grams(
        grams.student, grams.cross, grams.teacher, s_rows.T @ d, t_rows.T @ d, float(np.sum(d**2))
    )
    mask = np.ones(w.shape, bool)
    mask[[0, 3]] = False
    second, offset = refit_masked_paired(
        grams.student, grams.cross, w, b, mask, damping=0.0, shift=shifted.shift
    )
    kept = np.flatnonzero(mask[:, 0])
    design = np.hstack([x_s[:, kept], np.ones((len(x_s), 1))])
    target = x_t @ w + b + d
    expected = np.linalg.lstsq(design, target, rcond=None)[0]
    np.testing.assert_allclose(second[kept], expected[:-1], atol=1e-8)
    residual = x_s @ second + offset + r_s - (x_t @ w + b + r_t)
    want = np.sum(residual**2) / np.sum((x_t @ w + b) ** 2)
    assert paired_output_error(shifted, second, offset, w, b) == pytest.approx(want, rel=1e-8)


def test_paired_forms_reduce_to_the_teacher_only_ones():
    _, _, w, b, grams = _student_teacher()
    mask = np.random.default_rng(1).random(w.shape) > 0.5
    same = Grams(grams.teacher)
    one = refit_masked(grams.teacher, w, b, mask, damping=1e-3)
    two = refit_masked_paired(same.student, same.mixed, w, b, mask, damping=1e-3)
    np.testing.assert_allclose(one[0], two[0])
    np.testing.assert_allclose(one[1], two[1])


def test_paired_grams_of_a_model_and_itself_are_equal():
    m, feeds = _two_ffns()
    (grams,) = paired_grams(m, m.copy(), ["r2"], feeds)
    np.testing.assert_allclose(grams.student, grams.teacher)
    np.testing.assert_allclose(grams.cross, grams.teacher)
    assert grams.student[-1, -1] == ROWS * len(feeds)
