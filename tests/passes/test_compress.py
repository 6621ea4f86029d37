"""What the lossy passes share: Grams, allocator, budget, fidelity, distillation options."""

import numpy as np
import pytest
from graphs import initializer, model, tensor
from onnx import helper

from nlpress.passes.compress.allocate import allocate, step_sums
from nlpress.passes.compress.budget import Ladder, meet_budget
from nlpress.passes.compress.distillation import check_distill_options, distill_stage
from nlpress.passes.compress.grams import GramSum, augmented_weight, with_ones
from nlpress.passes.compress.options import check_budget_cosine, check_exclude, excluded
from nlpress.passes.compress.sensitivity import Fidelity


def _rows(count, width=5, seed=0):
    return np.random.default_rng(seed).standard_normal((count, width))


@pytest.mark.parametrize("flush_rows", [1, 7, 4096])
def test_gram_sum_equals_the_products_of_all_rows(flush_rows):
    batches = [_rows(n, seed=n) for n in (3, 9, 4)]
    teachers = [b + 0.1 for b in batches]
    shifts = [_rows(len(b), width=2, seed=10 + i) for i, b in enumerate(batches)]
    total = GramSum(flush_rows=flush_rows)
    for s, t, d in zip(batches, teachers, shifts, strict=True):
        total.add(s, t, d)
    grams = total.grams()
    x_s, x_t = with_ones(np.vstack(batches)), with_ones(np.vstack(teachers))
    d = np.vstack(shifts)
    np.testing.assert_allclose(grams.student, x_s.T @ x_s)
    np.testing.assert_allclose(grams.mixed, x_s.T @ x_t)
    np.testing.assert_allclose(grams.target, x_t.T @ x_t)
    np.testing.assert_allclose(grams.shift, x_s.T @ d)
    np.testing.assert_allclose(grams.shift_teacher, x_t.T @ d)
    assert grams.shift_energy == pytest.approx(float(np.sum(d**2)))


def test_gram_sum_without_a_teacher_is_its_own_target_and_diagonal_keeps_channel_energy():
    rows = _rows(11)
    single = GramSum()
    single.add(rows)
    grams = single.grams()
    assert grams.cross is None and grams.mixed is grams.student is grams.target
    energy = GramSum(diagonal=True)
    energy.add(rows)
    np.testing.assert_allclose(energy.total(), np.sum(rows**2, axis=0))
    with pytest.raises(ValueError, match="no calibration rows"):
        GramSum().grams()


def test_augmented_weight_maps_ones_rows_to_the_layer_output():
    x, w, b = _rows(4, 3), _rows(3, 2, seed=1), np.array([0.5, -1.0])
    np.testing.assert_allclose(with_ones(x) @ augmented_weight(w, b), x @ w + b)
    np.testing.assert_allclose(with_ones(x) @ augmented_weight(w, None), x @ w)


def test_allocate_takes_the_cheapest_step_that_fits():
    costs = [np.array([1.0, 5.0]), np.array([2.0, 3.0, 4.0])]
    assert allocate(costs, [1.0, 1.0], 3.0) == [1, 2]
    assert allocate(costs, [3.0, 1.0], 4.0) == [1, 1]  # then only unit 1's price fits: 1 left
    assert allocate(costs, [1.0, 1.0], 0.0) == [0, 0]
    assert allocate([np.array([1.0]), np.array([1.0])], [1.0, 1.0], 1.0) == [1, 0]  # first wins
    np.testing.assert_allclose(step_sums(np.arange(7.0), 6, 2), [1.0, 5.0, 9.0])


def _scaled(factor):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    w = np.eye(3, dtype=np.float32) * np.array([1.0, 1.0, factor], np.float32)
    return model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3])], [initializer("w", w)])


def test_fidelity_loss_is_zero_for_the_teacher_and_grows_with_damage():
    feeds = [{"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)}]
    fidelity = Fidelity(_scaled(1.0), feeds)
    assert fidelity.loss(_scaled(1.0)) == pytest.approx(0.0, abs=1e-7)
    assert fidelity.loss(_scaled(0.0)) > fidelity.loss(_scaled(0.5)) > 0.0


def test_distill_options_are_checked_and_zero_epochs_leave_the_student():
    with pytest.raises(ValueError, match="distill-epochs"):
        check_distill_options(-1, 1e-4)
    with pytest.raises(ValueError, match="distill-lr"):
        check_distill_options(1, 0.0)
    student = _scaled(0.5)
    out, stats = distill_stage(student, _scaled(1.0), [], 0, 1e-4)
    assert out is student and stats == {}


def test_exclude_matches_op_types_and_regexes_in_node_or_weight_names():
    names = ["/encoder/layer.0/attention/MatMul", "encoder.layer.0.query.weight"]
    assert excluded(("Gemm",), "Gemm", ["dense"])
    assert excluded((r"layer\.0/",), "MatMul", names)
    assert excluded(("query",), "MatMul", names)  # the weight's name
    assert not excluded(("layer.1", "Gemm"), "MatMul", names)


def test_exclude_reads_globs_as_globs_and_warns(caplog):
    with caplog.at_level("WARNING"):
        check_exclude("prune-sparsify", ("*layer.0*", "dow*"))
    assert caplog.text.count("deprecated") == 2
    assert excluded(("dow*",), "MatMul", ["down"]) and not excluded(("dow*",), "MatMul", ["ado"])
    assert excluded(("*layer.0*",), "MatMul", ["/encoder/layer.0/MatMul"])


def test_bad_exclude_and_budget_cosine_are_refused():
    with pytest.raises(ValueError, match="not a valid regex"):
        check_exclude("quantize-insert", ("(unclosed",))
    for value in (0.0, 1.5):
        with pytest.raises(ValueError, match="budget-cosine"):
            check_budget_cosine(value)
    check_budget_cosine(1.0)
    check_budget_cosine(None)


COSINES = [0.90, 0.95, 0.97, 0.985, 0.99, 1.0]


def _ladder(cosines=COSINES):
    asked = []

    def cosine(step):
        asked.append(step)
        return cosines[step]

    return Ladder(cosine, len(cosines) - 1), asked


@pytest.mark.parametrize("guess", [None, 1, 2, 4, 99])
def test_budget_driver_finds_the_least_step_that_meets_the_budget_from_any_guess(guess):
    ladder, asked = _ladder()
    met = meet_budget(0.97, ladder, guess and (lambda first: guess))
    assert (met.step, met.cosine, met.first) == (2, 0.97, 0.90)
    assert len(asked) == len(set(asked)) == met.measured  # each step measured once
    assert met.stats()["budget_met"] == 1.0 and met.stats()["budget_steps"] == 2


def test_budget_driver_stops_at_the_plan_when_it_meets_the_budget():
    ladder, asked = _ladder()
    met = meet_budget(0.85, ladder, lambda first: pytest.fail("no guess needed"))
    assert (met.step, asked) == (0, [0])


def test_budget_driver_reports_a_budget_the_top_step_still_misses():
    ladder, _ = _ladder([0.5, 0.6, 0.7])
    met = meet_budget(0.9, ladder)
    assert met.step == 2 and met.stats()["budget_met"] == 0.0 and met.cosine == 0.7
