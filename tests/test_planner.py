"""The planner: units and their shapes, pipeline text, the frontier search, and whole plans.

Plans here are for bert-tiny-random on the short calibration text; `arm` plans estimate kernel
costs (nothing is timed), `x86` ones time the kernels on this machine.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from commands import nlpress

import nlpress as api
from nlpress import compiler
from nlpress.ir import Feeds, Model
from nlpress.passes import parse, run_pipeline
from nlpress.planner import Plan, accuracy, cache
from nlpress.planner.search import Option, _bins, cheapest_within, frontier
from nlpress.planner.units import Choice, find_units, literal, pipeline_text


@pytest.fixture(scope="module", autouse=True)
def planner_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The planner's results kept in a folder of this module's own, not the user's cache."""
    folder = tmp_path_factory.mktemp("planner-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache, "cache_file", lambda name: folder / f"{name}.json")
        yield folder


@pytest.fixture(scope="module")
def tiny(tiny_bert_path: Path) -> Model:
    return run_pipeline(Model.from_onnx(onnx.load(tiny_bert_path)), parse("fold")).model


@pytest.fixture(scope="module")
def feeds(calibration_text: Path) -> list[Feeds]:
    source = compiler.resolve_model("bert-tiny-random")
    calibration = compiler.Calibration(str(calibration_text))
    return list(compiler.calibration_batches(calibration, source.zoo, {}))


@pytest.fixture(scope="module")
def planned(calibration_text: Path) -> Plan:
    calibration = compiler.Calibration(str(calibration_text))
    return compiler.plan("bert-tiny-random", 0.995, "size", "arm", calibration=calibration)


def _weights(model: Model) -> dict[str, tuple[int, ...]]:
    """Each MatMul's or Gemm's constant weight shape, by node name."""
    found = {}
    for node in model.graph.nodes:
        if node.op in ("MatMul", "Gemm") and hasattr(node.inputs[1], "values"):
            found[node.name] = tuple(node.inputs[1].shape)
    return found


def test_units_are_the_blocks_linears_and_tables_of_a_bert(tiny: Model) -> None:
    units = find_units(tiny)
    assert Counter(u.kind for u in units) == {"ffn": 2, "attention": 2, "linear": 1, "table": 3}
    ffn = next(u for u in units if u.kind == "ffn")
    assert (ffn.groups, ffn.shapes) == (256, ((64, 256), (256, 64)))
    attention = next(u for u in units if u.kind == "attention")
    assert attention.groups == 4 and len(attention.nodes) == 4


@pytest.mark.parametrize(("kind", "cut"), [("ffn", 0.25), ("ffn", 0.75), ("attention", 0.5)])
def test_the_shapes_a_cut_predicts_are_the_shapes_the_pipeline_writes(
    tiny: Model, feeds: list[Feeds], kind: str, cut: float
) -> None:
    unit = next(u for u in find_units(tiny) if u.kind == kind)
    text = pipeline_text({unit: Choice(cut)}, head="", tail="")
    cut_model = run_pipeline(tiny, parse(text), (), feeds).model
    weights = _weights(cut_model)
    assert tuple(weights[name] for name in unit.nodes) == unit.shapes_at(cut)
    others = {n: s for n, s in _weights(tiny).items() if n not in unit.nodes}
    assert {n: weights[n] for n in others} == others


def test_a_plan_is_pipeline_text_that_names_each_unit_it_changes(
    tiny: Model, feeds: list[Feeds]
) -> None:
    ffn, _, attention, *_, table = find_units(tiny)
    plan = {ffn: Choice(0.5, "int8"), attention: Choice(0.25, "int4"), table: Choice(0, "int4")}
    text = pipeline_text(plan)
    steps = parse(text)
    assert [s.name for s in steps] == [
        "fold", "prune-sparsify", "prune-sparsify", "quantize-insert", "quantize-weights",
        "cleanup",
    ]  # fmt: skip
    assert all(f"include={literal(n)}" in text or f",{literal(n)}" in text for n in ffn.nodes)
    out = run_pipeline(tiny, steps, (), feeds).model
    dequantized = {n.name for n in out.graph.nodes if n.op == "DequantizeLinear"}
    assert dequantized, "the precisions were not applied"


@pytest.mark.parametrize("name", ["a,b", "x{1}", "s p", 'q"t', "/layer.0/MatMul", "a.b+c*"])
def test_a_literal_matches_its_name_alone(name: str) -> None:
    pattern = literal(name)
    assert not set(pattern) & set(',{}" ')
    assert re.search(pattern, name)
    assert not re.search(pattern, name + "x") and not re.search(pattern, "x" + name)


def test_sensitivities_are_measured_once(
    tiny: Model, feeds: list[Feeds], monkeypatch: pytest.MonkeyPatch
) -> None:
    units = find_units(tiny)[:1]
    first = accuracy.measure(tiny, units, feeds[:1])
    assert len(first.parts) == len(accuracy.parts(units[0]))
    monkeypatch.setattr(accuracy, "run_pipeline", lambda *a: pytest.fail("measured again"))
    assert accuracy.measure(tiny, units, feeds[:1]) == first


@pytest.mark.parametrize("seed", range(8))
def test_the_frontier_is_the_least_cost_at_every_loss(seed: int) -> None:
    """Against every combination of 4 units x 3 options: no plan within a point's loss costs
    less, and every point's totals are its picks'."""
    rng = np.random.default_rng(seed)
    options = [
        [Option(0.0, 3.0, 10.0)]
        + [Option(float(rng.uniform(0, 0.02)), float(rng.uniform(0, 3)), 5.0) for _ in range(2)]
        for _ in range(4)
    ]
    max_loss, bins = 0.05, 50
    width = max_loss / bins
    points = frontier(options, "latency", max_loss, bins)
    assert [p.loss for p in points] == sorted(p.loss for p in points)
    assert [p.ms for p in points] == sorted((p.ms for p in points), reverse=True)
    combos = list(itertools.product(*(range(3) for _ in options)))
    for point in points:
        chosen = [unit[j] for unit, j in zip(options, point.picks, strict=True)]
        assert point.ms == pytest.approx(sum(o.ms for o in chosen))
        used = sum(_bins(o.loss, width) for o in chosen)
        best = min(
            sum(options[u][j].ms for u, j in enumerate(c))
            for c in combos
            if sum(_bins(options[u][j].loss, width) for u, j in enumerate(c)) <= used
        )
        assert point.ms == pytest.approx(best, abs=1e-6)
    assert cheapest_within(points, -1.0) is None
    assert cheapest_within(points, max_loss) == points[-1]


def test_a_plan_meets_its_budget_on_held_out_text(planned: Plan) -> None:
    assert planned.chosen is not None and planned.cosine >= planned.budget
    assert planned.chosen.choices in [p.choices for p in planned.frontier]
    losses = [1.0 - p.cosine for p in planned.frontier]
    assert losses == sorted(losses)
    sizes = [p.bytes for p in planned.frontier]
    assert sizes == sorted(sizes, reverse=True)
    assert planned.chosen.bytes < planned.float_bytes
    record = json.loads(json.dumps(planned.as_dict()))
    assert record["chosen"]["choices"] == {n: str(c) for n, c in planned.chosen.choices.items()}
    assert "<- chosen" in planned.describe()


def test_compile_with_a_budget_records_a_plan_that_compiles_again_identically(
    tmp_path: Path, calibration_text: Path
) -> None:
    calibration = compiler.Calibration(str(calibration_text))
    first = api.compile(
        "bert-tiny-random", "x86", tmp_path / "planned", budget=0.99, calibration=calibration
    )
    manifest = json.loads((first / "manifest.json").read_text())
    chosen = manifest["plan"]["chosen"]
    assert manifest["plan"]["costs"] == "measured" and chosen is not None
    again = api.compile(
        "bert-tiny-random", "x86", tmp_path / "again", chosen["pipeline"], calibration=calibration
    )
    assert (first / "model.onnx").read_bytes() == (again / "model.onnx").read_bytes()


def test_no_plan_within_the_budget_exits_3(
    monkeypatch: pytest.MonkeyPatch,
    calibration_text: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Every plan verified misses (the cosine measured is below any budget): exit 3."""
    from nlpress.passes.compress.sensitivity import Fidelity

    monkeypatch.setattr(Fidelity, "cosine", lambda self, model: 0.5)
    monkeypatch.setattr(cache, "cache_file", lambda name: tmp_path / f"{name}.json")
    argv = ["plan", "bert-tiny-random", "--budget", "cosine=0.99", "-t", "arm"]
    assert nlpress(*argv, "--calibration-text", calibration_text) == 3
    assert "no plan meets the budget" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "bert-tiny-random", "--budget", "cosine=1.5"],
        ["plan", "bert-tiny-random", "--budget", "accuracy=0.9"],
        ["plan", "bert-tiny-random", "--budget", "cosine=0.99", "--objective", "speed"],
        ["compile", "bert-tiny-random", "-p", "int8", "--budget", "cosine=0.99"],
    ],
)
def test_bad_budgets_are_refused(argv: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert nlpress(*argv, *(["-o", out] if argv[0] == "compile" else [])) == 2
    assert not out.exists()
