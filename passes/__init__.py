"""nlpress.passes: the pass contract, registry, textual pipelines, instruments and the passes."""

from nlpress.passes.base import OptionError, Pass, PassResult, PreconditionError
from nlpress.passes.instruments import (
    DumpIR,
    Instrument,
    PipelineResult,
    TimePasses,
    VerifyEach,
    run_pipeline,
)
from nlpress.passes.pipeline import Pipeline, PipelineSyntaxError
from nlpress.passes.registry import NAMED_PIPELINES, PASSES, parse

__all__ = [
    "NAMED_PIPELINES",
    "PASSES",
    "DumpIR",
    "Instrument",
    "OptionError",
    "Pass",
    "PassResult",
    "Pipeline",
    "PipelineResult",
    "PipelineSyntaxError",
    "PreconditionError",
    "TimePasses",
    "VerifyEach",
    "parse",
    "run_pipeline",
]
