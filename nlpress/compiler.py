"""The front door's work: resolve a model, run a pipeline, lower it to an artifact."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from nlpress.heldout import ZOO_TEXT, HeldOut, HeldOutText, held_out, measure
from nlpress.ir import (
    BudgetNotMet,
    Feeds,
    Model,
    NlpressError,
    UsageError,
    file_sha256,
    load_model,
    verify,
)
from nlpress.ir.embedding import KEY, embedding_output
from nlpress.ir.interface import dim_limits, graph_inputs, index_ranges, value_entry
from nlpress.ir.staging import check_writable, refuse_overwrite
from nlpress.models import zoo
from nlpress.models.feeds import Session, batches_from_npz, batches_from_text
from nlpress.models.text import calibration_sentences, load_tokenizer, read_sentences, split_heldout
from nlpress.passes import Instrument, Pass, Pipeline, PipelineResult, parse, run_pipeline
from nlpress.planner import Plan
from nlpress.targets.remote import Board
from nlpress.targets.runtime import FeedError, NodeArg, check_feeds

log = logging.getLogger(__name__)

Shapes = Mapping[str, tuple[int | str, ...]]
ModelLike = str | os.PathLike[str] | Model | onnx.ModelProto


@dataclass(frozen=True)
class Calibration:
    """Where calibration data comes from; a zoo model brings its own text when none is given.

    Attributes:
        text: A file of sentences, one per line (needs `tokenizer` unless the model is a zoo's).
        tokenizer: A zoo model name or a tokenizer.json file.
        feeds: An .npz of input arrays sharing their first (batch) axis.
        batches: Batches of input feeds already made (from Python), used as they are.
    """

    text: str | None = None
    tokenizer: str | None = None
    feeds: str | None = None
    batches: tuple[Feeds, ...] = ()


@dataclass(frozen=True)
class Source:
    """A resolved model argument.

    Attributes:
        model: The IR model.
        sha256: Its file's sha256 (None for a model given in memory).
        zoo: Its zoo entry: named, or recognized as a zoo export by its sha256.
        named: Whether it was given by its zoo name (not as a file).
        path: The file it was read from, if any.
    """

    model: Model
    sha256: str | None
    zoo: zoo.ZooModel | None
    named: bool = False
    path: Path | None = None


def resolve_model(model: ModelLike) -> Source:
    """A model path, zoo name, ModelProto or IR model, loaded."""
    if isinstance(model, Model):
        return Source(model, None, None)
    if isinstance(model, onnx.ModelProto):
        return Source(Model.from_onnx(model), None, None)
    path, entry = zoo.resolve(os.fspath(model))
    ir_model, sha256 = load_model(path), file_sha256(path)
    return Source(ir_model, sha256, entry or zoo.identify(sha256), entry is not None, path)


@dataclass(frozen=True)
class OptimizeResult(PipelineResult):
    """A pipeline's result, with the rewritten model's fidelity on held-out calibration text.

    Attributes:
        heldout: The held-out fidelity, or None when it could not be measured.
        heldout_note: Why not, in one line, where the reason is worth saying (e.g. calibration
            feeds hold no text); None otherwise.
        record: What the run did, in the fields an artifact's manifest gives them.
    """

    heldout: HeldOut | None = None
    heldout_note: str | None = None
    record: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def tokenizer_path(tokenizer: str | None, entry: zoo.ZooModel | None) -> str | None:
    """A tokenizer.json path from a zoo name or path, else the zoo model's own, else None."""
    if tokenizer:
        return str(zoo.get(tokenizer).tokenizer()) if tokenizer in zoo.ZOO else tokenizer
    return str(entry.tokenizer()) if entry else None


def calibration_batches(
    calibration: Calibration, entry: zoo.ZooModel | None, shapes: Shapes
) -> tuple[Feeds, ...]:
    """Calibration feeds from the given source, or the zoo model's own text, or none."""
    if calibration.batches:
        return calibration.batches
    static = _static_text_shape(shapes)
    if calibration.feeds:
        return batches_from_npz(calibration.feeds, static[0] if static else None)
    text = calibration_text(calibration, entry)
    if text is None:
        return ()
    path = tokenizer_path(calibration.tokenizer, entry)
    if path is None:
        raise UsageError("--calibration-text needs --tokenizer (a zoo name or tokenizer.json)")
    sentences = split_heldout(text[1])[0]
    return batches_from_text(load_tokenizer(path), sentences, static=static)


def calibration_text(
    calibration: Calibration, entry: zoo.ZooModel | None
) -> tuple[str, list[str]] | None:
    """The calibration text's name and sentences (the file's, else the zoo's), or None.

    Calibration from feeds has no text. The text is whole: `split_heldout` takes the held-out
    sentences from it.
    """
    if calibration.feeds or not (calibration.text or entry):
        return None
    if calibration.text:
        return Path(calibration.text).name, read_sentences(calibration.text)
    return ZOO_TEXT, calibration_sentences()


def heldout_text(source: Source, calibration: Calibration) -> tuple[HeldOutText | None, str | None]:
    """The held-out part of the calibration text, or None and, where worth saying, why not."""
    if calibration.batches:
        return None, "no held-out fidelity: the calibration batches are feeds, no text"
    if calibration.feeds:
        return None, f"no held-out fidelity: {Path(calibration.feeds).name} holds feeds, no text"
    text = calibration_text(calibration, source.zoo)
    if text is None:
        return None, None
    tokenizer = tokenizer_path(calibration.tokenizer, source.zoo)
    length = source.zoo.cut_length if source.zoo else zoo.DEFAULT_MAX_LENGTH
    return held_out(*text, source.model, tokenizer, length)


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
    model: ModelLike,
    pipeline: Pipeline,
    shapes: Shapes,
    calibration: Calibration,
    embedding: str | None = None,
) -> tuple[Source, Pipeline, tuple[Feeds, ...]]:
    """The model (declaring its `embedding` output), the pipeline, and the calibration batches."""
    pipeline = with_shapes(pipeline, shapes)
    source = with_embedding(resolve_model(model), embedding)
    check_shapes(source.model, shapes)
    if not any(p.needs_calibration for p in pipeline):
        if calibration.feeds or calibration.batches:
            log.warning("calibration data given, but no pass in %s reads it", pipeline)
        return source, pipeline, ()
    if calibration.text and not calibration.tokenizer and not source.named:
        raise UsageError(
            "--calibration-text needs --tokenizer (a zoo name or tokenizer.json) for a model "
            "given as a file"
        )
    feeds = calibration_batches(calibration, source.zoo, shapes)
    if calibration.batches or calibration.feeds:
        origin = "calibration batches" if calibration.batches else str(calibration.feeds)
        check_calibration_feeds(origin, source.model, feeds, shapes)
    return source, pipeline, feeds


def with_embedding(source: Source, name: str | None) -> Source:
    """The source, its model declaring output `name` its embedding (`ir/embedding.py`)."""
    if name is None:
        return source
    embedding_output(source.model.graph.outputs, name)  # a floating-point output of that name
    declared = dataclasses.replace(source.model, metadata={**source.model.metadata, KEY: name})
    return dataclasses.replace(source, model=declared)


def check_shapes(model: Model, shapes: Shapes) -> None:
    """Refuse `--shape` sizes beyond what the model computes (e.g. past its position table)."""
    if not shapes:
        return
    inputs = {t.name: t for t in model.graph.inputs}
    for name, dims in shapes.items():
        if name not in inputs:
            raise UsageError(f"--shape {name}: no such input; the inputs: {', '.join(inputs)}")
        rank = len(inputs[name].shape or ())
        if inputs[name].shape is not None and len(dims) != rank:
            raise UsageError(
                f"--shape {name}={'x'.join(map(str, dims))}: {len(dims)} dims, but the input "
                f"has {rank}"
            )
    limits = dim_limits(model.graph)
    for tensor in model.graph.inputs:
        pairs = zip(tensor.shape or (), shapes.get(tensor.name, ()), strict=False)
        for axis, (dim, size) in enumerate(pairs):
            limit = limits.get(dim) if isinstance(dim, str) else None
            if limit is not None and isinstance(size, int) and size > limit.maximum:
                raise UsageError(
                    f"--shape {tensor.name}: dim {axis} ({dim}) is {size}; the model computes "
                    f"at most {dim} = {limit.maximum} ({limit.reason})"
                )


def check_calibration_feeds(
    origin: str, model: Model, batches: Sequence[Feeds], shapes: Shapes
) -> None:
    """Refuse feeds (an .npz, or batches given) that are not the model's inputs, naming both."""
    inputs, ranges, limits = feed_checks(model)
    inputs = [NodeArg(a.name, list(shapes.get(a.name, a.shape)), a.dtype) for a in inputs]
    wanted = [arg.name for arg in inputs]
    found = list(batches[0]) if batches else []
    if sorted(found) != sorted(wanted):
        missing = [n for n in wanted if n not in found]
        unknown = [n for n in found if n not in wanted]
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"not inputs: {', '.join(unknown)}"] if unknown else []
        raise UsageError(
            f"{origin}: holds {', '.join(found) or 'no arrays'} ({'; '.join(parts)}); "
            f"the model's inputs are {', '.join(wanted)}"
        )
    for batch in batches:
        try:
            check_feeds(inputs, batch, ranges, limits)
        except FeedError as exc:
            raise UsageError(f"{origin}: {exc}") from exc


def feed_checks(
    model: Model,
) -> tuple[list[NodeArg], dict[str, tuple[int, int]], dict[str, tuple[int, str]]]:
    """What an artifact's runtime checks feeds against, for a model.

    Returns:
        Its inputs, the valid values of its token ids, and the largest sizes of its symbolic
        dims with their reasons.

    """
    proto = model.to_onnx()
    inputs = [_node_arg(value_entry(v)) for v in graph_inputs(proto)]
    limits = {k: (v.maximum, v.reason) for k, v in dim_limits(model.graph).items()}
    return inputs, index_ranges(proto), limits


def _node_arg(entry: Mapping[str, Any]) -> NodeArg:
    return NodeArg(str(entry["name"]), list(entry["shape"]), str(entry["dtype"]))


def check_budgets(pipeline: Pipeline, result: PipelineResult) -> None:
    """Raise BudgetNotMet for the first pass whose stats say its accuracy budget was missed.

    Passes with a budget report `budget_met` (1 or 0) and the value reached as `budget_cosine`
    in their stats; the budget asked for is the pass's own `budget_cosine` option.
    """
    for p, record in zip(pipeline, result.records, strict=True):
        if record.stats.get("budget_met", 1.0) != 0.0:
            continue
        wanted = getattr(p, "budget_cosine", None)
        reached = record.stats.get("budget_cosine")
        if wanted is not None and reached is not None:
            raise BudgetNotMet(p.name, "budget-cosine", wanted, reached, result)


def run_record(
    source: Source,
    pipeline: Pipeline,
    result: PipelineResult,
    heldout: HeldOut | None,
    note: str | None,
) -> dict[str, Any]:
    """What a manifest records of a pipeline run: text, source, passes, sizes, fidelity."""
    from nlpress.ir.summary import size_summary

    record: dict[str, Any] = {
        "pipeline": str(pipeline),
        "source": {
            "sha256": source.sha256,
            "zoo": source.zoo.name if source.zoo and source.zoo.name in zoo.ZOO else None,
            "origin": source.zoo.source if source.zoo else None,
        },
        "passes": [r.as_manifest() for r in result.records],
        "sizes": {"before": size_summary(source.model), "after": size_summary(result.model)},
    }
    if heldout or note:
        key, value = ("heldout", heldout.as_dict()) if heldout else ("heldout_note", note)
        record["fidelity"] = {key: value}
    return record


def optimize(
    model: ModelLike,
    pipeline: str | Pipeline,
    shapes: Shapes | None = None,
    instruments: Sequence[Instrument] = (),
    calibration: Calibration = Calibration(),
    report: str | os.PathLike[str] | None = None,
    embedding: str | None = None,
) -> OptimizeResult:
    """Run a pipeline (text, named, or parsed) on a model path, zoo name or IR model.

    Where calibration text is available, the result holds the rewritten model's fidelity to
    the source on the text's held-out sentences. With `report`, also write an HTML page of the
    run there (see `targets/report_html.py`). `embedding` names the output that budgets and
    fidelity measure (default: the one `ir/embedding.py` chooses); the result declares it.
    """
    parsed = parse(pipeline) if isinstance(pipeline, str) else pipeline
    source, parsed, feeds = _prepare(model, parsed, shapes or {}, calibration, embedding)
    held, note = heldout_text(source, calibration)
    result = run_pipeline(source.model, parsed, instruments, feeds)
    check_budgets(parsed, result)
    heldout, note = measure(source.model, result.model, held, note)
    record = run_record(source, parsed, result, heldout, note)
    if report is not None:
        from nlpress.targets.report_html import write_report

        write_report(Path(report), record)
    return OptimizeResult(result.model, result.records, heldout, note, record)


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
    board: Board | None = None,
    pooling: str | None = None,
    normalize: bool = False,
    tokenizer: str | None = None,
    embedding: str | None = None,
    budget: float | None = None,
    objective: str = "latency",
    **target_options: Any,
) -> Path:
    """Optimize a model (fold first) and lower it to an artifact folder for `target`.

    With `tune` > 0, MetaSchedule tunes the model's kernels for that many trials first and
    stores the records in `tuning_records`; a build with `tuning_records` reuses them. With
    `board`, the candidates are measured on the boards of its key, not on this machine.
    With `pooling` ("mean" or "cls", or "model": as a sentence-transformers folder pools), the
    pipeline ends in `pool{mode=POOLING normalize=...}`: the artifact gets a
    `sentence_embedding` output. `tokenizer` (a zoo name or tokenizer.json;
    default the calibration's, else a zoo model's own) is copied into the artifact. `embedding`
    names the output that budgets, fidelity and `encode` read (as in `optimize`). With `budget`
    (a least output cosine) the pipeline is the one `plan` chooses for `objective`, recorded
    with its frontier in the manifest; BudgetNotMet when no plan meets it.
    """
    from nlpress import sentences, targets
    from nlpress.targets import tuning

    _check_tuning(tune, tuning_records, board)
    descriptor = targets.get_target(target, **target_options)
    parsed = starting_with_fold(parse(pipeline))
    if pooling != sentences.MODEL_POOLING:  # checked before the model is read
        sentences.with_pooling(parsed, pooling, normalize)
    calibration = dataclasses.replace(calibration, tokenizer=calibration.tokenizer or tokenizer)
    _refuse_overwrite(output, model, calibration, tuning_records)
    check_writable(output, folder=True)
    targets.check_replaceable(Path(output))
    planned = None
    if budget is not None:
        planned = plan(
            model, budget, objective, target, shapes, calibration, embedding, **target_options
        )
        if planned.chosen is None:
            raise BudgetNotMet("planner", "cosine", budget, planned.cosine)
        parsed = parse(planned.chosen.pipeline)
    source, parsed, feeds = _prepare(model, parsed, shapes or {}, calibration, embedding)
    parsed = sentences.with_pooling(parsed, pooling, normalize, source.zoo)
    if tune:
        _require_static(source.model, shapes or {})
    carried = sentences.checked_tokenizer(
        tokenizer_path(tokenizer or calibration.tokenizer, source.zoo)
    )
    held, note = heldout_text(source, calibration)
    result = run_pipeline(source.model, parsed, instruments, feeds)
    check_budgets(parsed, result)
    heldout, note = measure(source.model, result.model, held, note)
    manifest = run_record(source, parsed, result, heldout, note)
    if planned is not None:
        manifest["plan"] = planned.as_dict()
    encoder = sentences.encoder_entry(parsed, result.model, carried, source.zoo)
    if encoder:
        manifest["encoder"] = encoder
    files = {sentences.TOKENIZER_FILE: carried} if carried else {}
    with _removed_on_failure(tuning_records if tune else None):
        if tune and tuning_records is not None:
            _require_static(result.model, {})
            tuning.tune_model(result.model.to_onnx(), descriptor, tune, tuning_records, board)
        from nlpress import __version__

        return targets.build_artifact(
            result.model,
            descriptor,
            Path(output),
            manifest=manifest,
            files=files,
            records=tuning_records,
            version=__version__,
        )


PLAN_ROWS = 128


def plan(
    model: ModelLike,
    budget: float,
    objective: str = "latency",
    target: str = "x86",
    shapes: Shapes | None = None,
    calibration: Calibration = Calibration(),
    embedding: str | None = None,
    **target_options: Any,
) -> Plan:
    """Choose per unit between float, int8, 4-bit and cuts so the output cosine meets `budget`.

    Sensitivities are measured on the calibration batches and the plan verified on the
    held-out part of the calibration text (on the calibration batches where there is no text);
    kernels are timed for `target` at the workload's rows (`shapes`' batch x sequence, else
    PLAN_ROWS). The plan's pipeline text (`Plan.chosen.pipeline`) compiles without searching.
    """
    from nlpress.planner import OBJECTIVES
    from nlpress.planner import plan as plan_units
    from nlpress.targets import get_target

    if not 0.0 < budget < 1.0:
        raise UsageError(f"--budget cosine={budget}: expected 0 < cosine < 1")
    if objective not in OBJECTIVES:
        raise UsageError(f"--objective {objective}: expected one of {', '.join(OBJECTIVES)}")
    descriptor = get_target(target, **target_options)
    head = with_shapes(parse("fold"), shapes or {})
    source = with_embedding(resolve_model(model), embedding)
    check_shapes(source.model, shapes or {})
    feeds = calibration_batches(calibration, source.zoo, shapes or {})
    if not feeds:
        raise UsageError(
            "planning needs calibration data: --calibration-text with --tokenizer, or "
            "--calibration FEEDS.npz (zoo models bring their own text)"
        )
    if calibration.batches or calibration.feeds:
        check_calibration_feeds("calibration", source.model, feeds, shapes or {})
    folded = run_pipeline(source.model, head, (), ()).model
    static = _static_text_shape(shapes or {})
    check = _heldout_batches(source, calibration, static) or feeds
    rows = static[0] * static[1] if static else PLAN_ROWS
    return plan_units(folded, feeds, check, budget, objective, descriptor, rows, str(head))


def _heldout_batches(
    source: Source, calibration: Calibration, static: tuple[int, int] | None
) -> tuple[Feeds, ...]:
    """The held-out sentences as batches, or none without a held-out text."""
    text, _ = heldout_text(source, calibration)
    if text is None:
        return ()
    tokenizer = load_tokenizer(text.tokenizer)
    return batches_from_text(tokenizer, text.sentences, text.max_length, static)


def _check_tuning(tune: int, records: str | os.PathLike[str] | None, board: Board | None) -> None:
    if not isinstance(tune, int) or isinstance(tune, bool) or tune < 0:
        raise UsageError(f"--tune {tune}: give a positive number of trials")
    if tune and records is None:
        raise UsageError("--tune needs --tuning-records DIR to keep what it finds")
    if board is not None and not tune:
        raise UsageError("--rpc measures --tune's candidates on boards: give --tune TRIALS too")


def _require_static(model: Model, shapes: Shapes) -> None:
    """Refuse tuning a model with symbolic input dims: MetaSchedule measures fixed sizes."""
    symbolic = {}
    for tensor in model.graph.inputs:
        dims = shapes.get(tensor.name, tensor.shape or ())
        names = [str(d) for d in dims if not isinstance(d, int)]
        if names:
            symbolic[tensor.name] = names
    if symbolic:
        listed = "; ".join(f"{name} ({', '.join(dims)})" for name, dims in symbolic.items())
        raise UsageError(
            "--tune measures kernels at fixed sizes, and these inputs have symbolic dims: "
            f"{listed}; fix them with --shape (e.g. --shape input_ids=1x128), or build "
            "without --tune"
        )


def _refuse_overwrite(
    output: str | os.PathLike[str],
    model: ModelLike,
    calibration: Calibration,
    tuning_records: str | os.PathLike[str] | None,
) -> None:
    """Refuse an output folder that is, or holds, one of the build's inputs."""
    path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    path = path if path is not None and os.path.exists(path) else None
    tokenizer = calibration.tokenizer if calibration.tokenizer not in zoo.ZOO else None
    inputs = [path, calibration.text, calibration.feeds, tokenizer, tuning_records]
    refuse_overwrite(output, inputs, folder=True)


@contextlib.contextmanager
def _removed_on_failure(folder: str | os.PathLike[str] | None) -> Iterator[None]:
    """Remove the records `folder` if the block fails and it did not exist before it.

    Records already measured are kept: a failure late in tuning (a board lost) costs only
    what was not measured yet, and a later `--tune` adds to them.
    """
    from nlpress.targets.tuning import record_count

    existed = folder is None or os.path.exists(folder)
    try:
        yield
    except BaseException:
        if not existed and folder is not None:
            kept = record_count(folder)
            if kept:
                log.warning("kept the %d tuning records measured so far in %s", kept, folder)
            else:
                shutil.rmtree(folder, ignore_errors=True)
        raise


def open_session(
    model: str | os.PathLike[str], threads: int = 0
) -> tuple[Session, zoo.ZooModel | None]:
    """A session for an artifact folder (TVM) or a model (ONNX Runtime), and its zoo entry.

    Both check feeds the same way before anything runs (names, dtypes, shapes, token ids, the
    largest sizes the model computes). `threads` sets the artifact's CPU threads (0: one per
    usable CPU).
    """
    path = Path(model)
    if path.is_dir():
        from nlpress import targets

        session = targets.load(path, threads=threads)
        name = session.manifest.get("source", {}).get("zoo")
        return session, zoo.ZOO.get(name) if isinstance(name, str) else None
    source = resolve_model(model)
    return CheckedSession(source.model), source.zoo


class CheckedSession:
    """An ONNX Runtime session that checks feeds as an artifact's runtime does.

    Its failures are one line naming ONNX Runtime; `get_inputs` describes the inputs as an
    artifact session does.
    """

    def __init__(self, model: Model) -> None:
        """Check the feeds of `model`, and run it in ONNX Runtime with its graph optimizations."""
        self.inputs, self.index_ranges, self.limits = feed_checks(model)
        self._session = verify.session(model, optimize=True)

    def get_inputs(self) -> list[NodeArg]:
        """The inputs, in the model's order."""
        return list(self.inputs)

    def get_outputs(self) -> Sequence[Any]:
        """The outputs, as ONNX Runtime describes them."""
        return list(self._session.get_outputs())

    def get_modelmeta(self) -> Any:
        """The model's metadata, as ONNX Runtime describes it."""
        return self._session.get_modelmeta()

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, Any]) -> list[Any]:
        """Check the feeds, then run; outputs as ONNX Runtime returns them."""
        arrays = check_feeds(self.inputs, feeds, self.index_ranges, self.limits)
        named = {arg.name: array for arg, array in zip(self.inputs, arrays, strict=True)}
        try:
            return list(self._session.run(output_names, named))
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise NlpressError(f"ONNX Runtime failed: {verify.first_line(exc)}") from exc


def dim_limits_of(session: Any) -> dict[str, tuple[int, str]]:
    """The largest sizes of a session's symbolic dims (an artifact's, or a checked model's)."""
    if isinstance(session, CheckedSession):
        return dict(session.limits)
    from nlpress.targets.runtime import dim_limits as recorded

    manifest = getattr(session, "manifest", None)
    return recorded(manifest) if isinstance(manifest, Mapping) else {}
