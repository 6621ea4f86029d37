"""An accuracy budget a pass cannot reach stops the front door with BudgetNotMet (exit 3)."""

import numpy as np
import pytest

from nlpress.compiler import Calibration, check_budgets, optimize
from nlpress.ir import BudgetNotMet, load_model
from nlpress.passes import PipelineResult, parse
from nlpress.passes.instruments import PassRecord


def _result(pipeline, stats):
    records = tuple(PassRecord(str(p), True, s, 0.0) for p, s in zip(pipeline, stats, strict=True))
    return PipelineResult(None, records)


def test_the_first_missed_budget_is_raised_with_what_was_asked_and_reached():
    pipeline = parse("fold,prune-sparsify{sparsity=0.5 budget-cosine=0.99},cleanup")
    missed = {"budget_met": 0.0, "budget_cosine": 0.93}
    result = _result(pipeline, [{}, missed, {}])
    with pytest.raises(BudgetNotMet) as caught:
        check_budgets(pipeline, result)
    assert str(caught.value) == "prune-sparsify: budget-cosine=0.99 asked, 0.93 reached"
    assert (caught.value.budget, caught.value.reached) == (0.99, 0.93)
    assert caught.value.result is result


def test_met_budgets_and_passes_without_one_pass():
    pipeline = parse("fold,quantize-insert{budget-cosine=0.99},cleanup")
    met = {"budget_met": 1.0, "budget_cosine": 0.995}
    for stats in ([{}, met, {}], [{}, {}, {}]):
        check_budgets(pipeline, _result(pipeline, stats))  # raises nothing


def test_optimize_raises_when_quantize_insert_cannot_reach_its_budget(tiny_bert_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30522, (16, 12))
    feeds = ({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids},)
    model, calibration = load_model(tiny_bert_path), Calibration(batches=feeds)
    with pytest.raises(BudgetNotMet, match=r"quantize-insert: budget-cosine=0.99999999 asked"):
        optimize(model, "fold,quantize-insert{budget-cosine=0.99999999}", calibration=calibration)
    result = optimize(model, "fold,quantize-insert{budget-cosine=0.99}", calibration=calibration)
    assert result.records[1].stats["budget_met"] == 1.0
