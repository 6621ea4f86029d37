"""The front door's work: resolve a model, run a pipeline, lower it to an artifact."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from nlpress.ir import Model, UsageError, file_sha256, load_model
from nlpress.models import zoo
from nlpress.passes import Instrument, Pass, Pipeline, PipelineResult, parse, run_pipeline

Shapes = Mapping[str, tuple[int | str, ...]]
ModelLike = str | os.PathLike[str] | Model | onnx.ModelProto


def resolve_model(model: ModelLike) -> tuple[Model, str | None, zoo.ZooModel | None]:
    """A model argument as (IR model, sha256 of its file if any, zoo entry if any)."""
    if isinstance(model, Model):
        return model, None, None
    if isinstance(model, onnx.ModelProto):
        return Model.from_onnx(model), None, None
    path, entry = zoo.resolve(os.fspath(model))
    ir_model, sha256 = load_model(path), file_sha256(path)
    return ir_model, sha256, entry or zoo.identify(sha256)


def with_shapes(pipeline: Pipeline, shapes: Shapes) -> Pipeline:
    """The pipeline with `shapes` merged into every pass that takes a `shape` option."""
    if not shapes:
        return pipeline
    if not any(_takes_shapes(p) for p in pipeline):
        raise UsageError(
            f"--shape needs a pass that fixes shapes (fold) in the pipeline {pipeline}"
        )
    return Pipeline(tuple(_merge_shapes(p, shapes) for p in pipeline))


def _takes_shapes(p: Pass) -> bool:
    return any(f.name == "shape" for f in dataclasses.fields(p))


def _merge_shapes(p: Pass, shapes: Shapes) -> Pass:
    if not _takes_shapes(p):
        return p
    return dataclasses.replace(p, shape={**p.shape, **shapes})  # type: ignore[attr-defined]


def optimize(
    model: ModelLike,
    pipeline: str | Pipeline,
    shapes: Shapes | None = None,
    instruments: Sequence[Instrument] = (),
) -> PipelineResult:
    """Run a pipeline (text, named, or parsed) on a model path, zoo name or IR model."""
    parsed = parse(pipeline) if isinstance(pipeline, str) else pipeline
    parsed = with_shapes(parsed, shapes or {})
    ir_model, _, _ = resolve_model(model)
    return run_pipeline(ir_model, parsed, instruments)


def starting_with_fold(pipeline: Pipeline) -> Pipeline:
    """The pipeline, with `fold` put first unless it already starts with it."""
    if pipeline.passes and pipeline.passes[0].name == "fold":
        return pipeline
    fold: Pass = parse("fold").passes[0]
    return Pipeline((fold, *pipeline.passes))


def compile(
    model: ModelLike,
    target: str,
    output: str | os.PathLike[str],
    pipeline: str = "O1",
    shapes: Shapes | None = None,
    instruments: Sequence[Instrument] = (),
    **target_options: Any,
) -> Path:
    """Optimize a model (fold first) and lower it to an artifact folder for `target`."""
    from nlpress import targets

    parsed = with_shapes(starting_with_fold(parse(pipeline)), shapes or {})
    ir_model, sha256, entry = resolve_model(model)
    descriptor = targets.get_target(target, **target_options)
    result = run_pipeline(ir_model, parsed, instruments)
    manifest = {
        "pipeline": str(parsed),
        "source": {"sha256": sha256, "zoo": entry.name if entry else None},
        "passes": [dataclasses.asdict(r) for r in result.records],
    }
    return targets.build_artifact(result.model, descriptor, Path(output), manifest=manifest)
