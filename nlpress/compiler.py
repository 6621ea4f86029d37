"""The front door's work: resolve a model, run a pipeline, lower it to an artifact."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from nlpress.ir import Model, UsageError, file_sha256, load_model, verify
from nlpress.models import zoo
from nlpress.models.feeds import Feeds, Session, batches_from_npz, batches_from_text
from nlpress.models.text import calibration_sentences, load_tokenizer, read_sentences
from nlpress.passes import Instrument, Pass, Pipeline, PipelineResult, parse, run_pipeline

Shapes = Mapping[str, tuple[int | str, ...]]
ModelLike = str | os.PathLike[str] | Model | onnx.ModelProto


@dataclass(frozen=True)
class Calibration:
    """Where calibration data comes from; a zoo model brings its own text when none is given.

    Attributes:
        text: A file of sentences, one per line (needs `tokenizer` unless the model is a zoo's).
        tokenizer: A zoo model name or a tokenizer.json file.
        feeds: An .npz of input arrays sharing their first (batch) axis.
    """

    text: str | None = None
    tokenizer: str | None = None
    feeds: str | None = None


@dataclass(frozen=True)
class Source:
    """A resolved model argument: the IR model, its file's sha256 and its zoo entry, if any."""

    model: Model
    sha256: str | None
    zoo: zoo.ZooModel | None


def resolve_model(model: ModelLike) -> Source:
    """A model path, zoo name, ModelProto or IR model, loaded."""
    if isinstance(model, Model):
        return Source(model, None, None)
    if isinstance(model, onnx.ModelProto):
        return Source(Model.from_onnx(model), None, None)
    path, entry = zoo.resolve(os.fspath(model))
    ir_model, sha256 = load_model(path), file_sha256(path)
    return Source(ir_model, sha256, entry or zoo.identify(sha256))


def tokenizer_path(tokenizer: str | None, entry: zoo.ZooModel | None) -> str | None:
    """A tokenizer.json path from a zoo name or path, else the zoo model's own, else None."""
    if tokenizer:
        return str(zoo.get(tokenizer).tokenizer()) if tokenizer in zoo.ZOO else tokenizer
    return str(entry.tokenizer()) if entry else None


def calibration_batches(
    calibration: Calibration, entry: zoo.ZooModel | None, shapes: Shapes
) -> tuple[Feeds, ...]:
    """Calibration feeds from the given source, or the zoo model's own text, or none."""
    static = _static_text_shape(shapes)
    if calibration.feeds:
        return batches_from_npz(calibration.feeds, static[0] if static else None)
    if not (calibration.text or entry):
        return ()
    path = tokenizer_path(calibration.tokenizer, entry)
    if path is None:
        raise UsageError("--calibration-text needs --tokenizer (a zoo name or tokenizer.json)")
    sentences = read_sentences(calibration.text) if calibration.text else calibration_sentences()
    return batches_from_text(load_tokenizer(path), sentences, static=static)


def _static_text_shape(shapes: Shapes) -> tuple[int, int] | None:
    dims = tuple(shapes.get("input_ids", ()))
    if len(dims) == 2 and isinstance(dims[0], int) and isinstance(dims[1], int):
        return dims[0], dims[1]
    return None


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
    return dataclasses.replace(p, shape={**p.shape, **shapes})  # type: ignore[attr-defined,call-arg]


def starting_with_fold(pipeline: Pipeline) -> Pipeline:
    """The pipeline, with `fold` put first unless it already starts with it."""
    if pipeline.passes and pipeline.passes[0].name == "fold":
        return pipeline
    return Pipeline((*parse("fold").passes, *pipeline.passes))


def _prepare(
    model: ModelLike, pipeline: Pipeline, shapes: Shapes, calibration: Calibration
) -> tuple[Source, Pipeline]:
    pipeline = with_shapes(pipeline, shapes)
    source = resolve_model(model)
    if any(p.needs_calibration for p in pipeline):
        feeds = calibration_batches(calibration, source.zoo, shapes)
        if not feeds:  # an IR model given with its own calibration keeps it
            return source, pipeline
        source = dataclasses.replace(
            source, model=dataclasses.replace(source.model, calibration=feeds)
        )
    return source, pipeline


def optimize(
    model: ModelLike,
    pipeline: str | Pipeline,
    shapes: Shapes | None = None,
    instruments: Sequence[Instrument] = (),
    calibration: Calibration = Calibration(),
) -> PipelineResult:
    """Run a pipeline (text, named, or parsed) on a model path, zoo name or IR model."""
    parsed = parse(pipeline) if isinstance(pipeline, str) else pipeline
    source, parsed = _prepare(model, parsed, shapes or {}, calibration)
    return run_pipeline(source.model, parsed, instruments)


def compile(
    model: ModelLike,
    target: str,
    output: str | os.PathLike[str],
    pipeline: str = "O1",
    shapes: Shapes | None = None,
    instruments: Sequence[Instrument] = (),
    calibration: Calibration = Calibration(),
    tune: int = 0,
    tuning_records: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
    **target_options: Any,
) -> Path:
    """Optimize a model (fold first) and lower it to an artifact folder for `target`.

    With `tune` > 0, MetaSchedule tunes the model's kernels for that many trials first and
    stores the records in `tuning_records`; a build with `tuning_records` reuses them.
    """
    from nlpress import targets
    from nlpress.targets import tuning

    if tune and tuning_records is None:
        raise UsageError("--tune needs --tuning-records DIR to keep what it finds")
    descriptor = targets.get_target(target, **target_options)
    parsed = starting_with_fold(parse(pipeline))
    source, parsed = _prepare(model, parsed, shapes or {}, calibration)
    result = run_pipeline(source.model, parsed, instruments)
    manifest = {
        "pipeline": str(parsed),
        "source": {"sha256": source.sha256, "zoo": source.zoo.name if source.zoo else None},
        "passes": [dataclasses.asdict(r) for r in result.records],
    }
    if tune and tuning_records is not None:
        tuning.tune_model(
            result.model.to_onnx(), descriptor, tune, tuning_records, progress=progress
        )
    with tuning.using_records(tuning_records):
        return targets.build_artifact(result.model, descriptor, Path(output), manifest=manifest)


def open_session(model: str | os.PathLike[str]) -> tuple[Session, zoo.ZooModel | None]:
    """A session for an artifact folder (TVM) or a model (ONNX Runtime), and its zoo entry."""
    path = Path(model)
    if path.is_dir():
        from nlpress import targets

        session = targets.load(path)
        name = session.manifest.get("source", {}).get("zoo")
        return session, zoo.ZOO.get(name) if isinstance(name, str) else None
    source = resolve_model(model)
    return verify.session(source.model, optimize=True), source.zoo
