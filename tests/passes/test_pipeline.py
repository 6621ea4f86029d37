from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import pytest
from graphs import text_model
from hypothesis import given
from hypothesis import strategies as st

from nlpress.ir import Feeds, Model, UsageError
from nlpress.ir.dump import dump_text
from nlpress.ir.verify import compare, make_feeds
from nlpress.passes import PASSES, OptionError, PipelineSyntaxError, parse, run_pipeline
from nlpress.passes.base import SHAPES_OPTION, Pass, PassResult, option_fields
from nlpress.passes.pipeline import parse_pipeline


@dataclass(frozen=True)
class Knobs(Pass):
    """A pass with one option of every kind, for parser tests.

    Options:
        ratio: A float.
        steps: An int.
        on: A bool.
        mode: A choice.
        exclude: Names.
        limit: An optional int.
        shape: Input shapes.
    """

    name = "knobs"
    ratio: float = 0.5
    steps: int = 3
    on: bool = True
    mode: Literal["fast", "exact"] = "fast"
    exclude: tuple[str, ...] = ()
    limit: int | None = None
    shape: dict[str, tuple[int | str, ...]] = field(default_factory=dict, metadata=SHAPES_OPTION)

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"ratio must be in [0, 1], got {self.ratio}")

    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        return PassResult(model, False, {})


REGISTRY = {**PASSES, "knobs": Knobs}


def test_every_option_kind_parses_and_prints_canonically():
    text = (
        "knobs{ratio=0.25 steps=7 on=false mode=exact exclude=a,b.*"
        " limit=4 shape=input_ids:1x128,mask:batchx128},cleanup"
    )
    pipeline = parse_pipeline(text, REGISTRY)
    knobs = pipeline.passes[0]
    assert knobs == Knobs(
        0.25, 7, False, "exact", ("a", "b.*"), 4, {"input_ids": (1, 128), "mask": ("batch", 128)}
    )
    assert str(pipeline) == (
        "knobs{ratio=0.25 steps=7 on=false mode=exact exclude=a,b.* limit=4"
        " shape=input_ids:1x128,mask:batchx128},cleanup{remove-unused-inputs=false}"
    )
    assert parse_pipeline(str(pipeline), REGISTRY) == pipeline


def test_options_left_at_an_empty_default_are_left_out():
    pipeline = parse_pipeline("knobs,fold", REGISTRY)
    assert str(pipeline) == (
        "knobs{ratio=0.5 steps=3 on=true mode=fast limit=none},fold{max-bytes=1048576}"
    )
    assert parse_pipeline(str(pipeline), REGISTRY) == pipeline


@given(
    ratio=st.floats(0, 1, allow_nan=False),
    steps=st.integers(-5, 10**6),
    on=st.booleans(),
    mode=st.sampled_from(["fast", "exact"]),
    exclude=st.lists(st.from_regex(r"[A-Za-z_/.][\w/.*]{0,8}", fullmatch=True), max_size=3),
    limit=st.none() | st.integers(0, 100),
)
def test_print_then_parse_round_trips(ratio, steps, on, mode, exclude, limit):
    knobs = Knobs(ratio, steps, on, mode, tuple(exclude), limit)
    pipeline = parse_pipeline(f"cleanup,{knobs}", REGISTRY)
    assert pipeline.passes[1] == knobs
    assert parse_pipeline(str(pipeline), REGISTRY) == pipeline


def test_named_pipelines_are_texts():
    assert str(parse("O0")) == str(parse("cleanup"))


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("nosuchpass", PipelineSyntaxError, "unknown pass 'nosuchpass'; valid passes: "),
        ("cleanup{bogus=1}", OptionError, "unknown option 'bogus'; valid options: remove-unused"),
        ("cleanup{remove-unused-inputs=maybe}", OptionError, "expected true or false"),
        ("knobs{ratio=2}", OptionError, "ratio must be in"),
        ("knobs{mode=slow}", OptionError, "expected one of fast, exact"),
        ("knobs{steps}", OptionError, "needs a value"),
        ("cleanup{", PipelineSyntaxError, "unbalanced"),
        ("cleanup,,cleanup", PipelineSyntaxError, "empty step"),
        ("", PipelineSyntaxError, "empty pipeline"),
    ],
)
def test_errors_are_usage_errors_that_say_what_is_valid(text, error, message):
    with pytest.raises(error, match=message) as info:
        parse_pipeline(text, REGISTRY)
    assert isinstance(info.value, UsageError)


def test_unknown_pass_lists_every_registered_pass():
    with pytest.raises(PipelineSyntaxError) as info:
        parse("nosuchpass")
    for name in PASSES:
        assert name in str(info.value)


def test_option_help_comes_from_the_docstring():
    assert Knobs.option_help()["ratio"] == "A float."
    assert Knobs.summary() == "A pass with one option of every kind, for parser tests."
    for cls in PASSES.values():
        assert cls.summary(), cls
        assert set(cls.option_help()) >= set(option_fields(cls)), cls


def test_the_o1_pipeline_is_exact_and_golden(golden):
    """O1 (fold, identity-elim, cleanup) on a graph with work for each of them."""
    before = text_model(
        """g (float[n, 3] x) => (float[n, 2] y)
            <float[2, 3] w = {1, 2, 3, 4, 5, 6}, float[2] b = {0.5, -0.5}> {
            [id] a = Identity(x)
            [transpose] wt = Transpose<perm = [1, 0]>(w)
            [mm] h = MatMul(a, wt)
            [bias] z = Add(b, h)
            [dead] unused = Relu(z)
            [out] y = Identity(z)
        }"""
    )
    pipeline = parse("O1")
    result = run_pipeline(before, pipeline)
    golden("O1", dump_text(result.model))
    assert compare(before, result.model, make_feeds(before, {"n": 3})).worst <= 1e-6
    assert not any(record.changed for record in run_pipeline(result.model, pipeline).records)
