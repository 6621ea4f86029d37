from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from graphs import initializer, model, tensor, weights
from onnx import helper

from nlpress.ir import Feeds, Model, VerificationError
from nlpress.passes import DumpIR, PassResult, TimePasses, VerifyEach, parse, run_pipeline
from nlpress.passes.base import Pass, PreconditionError
from nlpress.passes.pipeline import Pipeline


def _model():
    return model(
        [
            helper.make_node("Identity", ["x"], ["a"], name="id"),
            helper.make_node("MatMul", ["a", "w"], ["h"], name="mm"),
            helper.make_node("Relu", ["h"], ["y"], name="relu"),
        ],
        [tensor("x", ["batch", 4])],
        [tensor("y", ["batch", 3])],
        [initializer("w", weights([4, 3]))],
    )


@dataclass(frozen=True)
class BreakWeights(Pass):
    """Scales every constant by two: a wrong 'exact' pass."""

    name = "break-weights"

    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        out = model.copy()
        for node in out.graph.nodes:
            node.inputs = [
                gs.Constant(t.name + "_x2", np.asarray(t.values) * 2)
                if isinstance(t, gs.Constant)
                else t
                for t in node.inputs
            ]
        return PassResult(out, True, {})


@dataclass(frozen=True)
class NeedsFirst(Pass):
    """Refuses to follow any pass."""

    name = "needs-first"

    def check_order(self, earlier):
        if earlier:
            raise PreconditionError("needs-first must come first")

    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        return PassResult(model, False, {})


def test_dump_ir_writes_a_dump_and_diff_per_pass(tmp_path):
    pipeline = parse("identity-elim,cleanup")
    run_pipeline(_model(), pipeline, [DumpIR(tmp_path)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "00-input.txt",
        "01-identity-elim.diff",
        "01-identity-elim.txt",
        "02-cleanup.diff",
        "02-cleanup.txt",
    ]
    assert (tmp_path / "00-input.txt").read_text().startswith(f"# pipeline: {pipeline}\n")
    diff = (tmp_path / "01-identity-elim.diff").read_text()
    assert "-node id = Identity(x) -> (a)" in diff
    assert "+node mm = MatMul(x, w) -> (h)" in diff
    assert (
        tmp_path / "02-cleanup.diff"
    ).read_text() == "# pass: cleanup{remove-unused-inputs=false}\n"


def test_time_passes_reports_every_pass():
    timer = TimePasses()
    result = run_pipeline(_model(), parse("identity-elim,cleanup"), [timer])
    assert [name for name, _ in timer.seconds] == ["identity-elim", "cleanup"]
    assert timer.report().splitlines()[-1].startswith("total")
    assert [r.changed for r in result.records] == [True, False]


def test_verify_each_accepts_exact_passes_and_catches_a_wrong_one():
    verify = VerifyEach()
    run_pipeline(_model(), parse("identity-elim,cleanup"), [verify])
    assert verify.worst == {"identity-elim": 0.0, "cleanup": 0.0}
    with pytest.raises(VerificationError, match="pass break-weights changed outputs"):
        run_pipeline(_model(), Pipeline((BreakWeights(),)), [VerifyEach()])


def test_order_conflicts_stop_before_any_pass_runs(tmp_path):
    pipeline = Pipeline((*parse("cleanup").passes, NeedsFirst()))
    with pytest.raises(PreconditionError, match="must come first"):
        run_pipeline(_model(), pipeline, [DumpIR(tmp_path)])
    assert list(tmp_path.iterdir()) == []
