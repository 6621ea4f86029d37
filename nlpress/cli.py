"""The `nlpress` command line.

Exit codes: 0 done, 1 failed (one line on stderr; the traceback with --verbose), 2 bad usage,
3 an accuracy budget was not met; 130 or 143 when stopped by SIGINT or SIGTERM (128 + the
signal's number), with nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from nlpress import cli_remote, compiler
from nlpress.config import BuildConfig, load_config
from nlpress.ir import (
    BudgetNotMet,
    NlpressError,
    UsageError,
    copy_file,
    load_model,
    save_model,
)
from nlpress.ir.dump import diff_text, dump_text
from nlpress.ir.progress import reporting
from nlpress.ir.staging import (
    Interrupted,
    check_writable,
    received_signal,
    refuse_overwrite,
    removing_staging_on_signals,
    staging_file,
)
from nlpress.ir.summary import format_summary, summarize
from nlpress.ir.verify import first_line
from nlpress.models import zoo
from nlpress.overview import overview
from nlpress.passes import (
    NAMED_PIPELINES,
    PASSES,
    DumpIR,
    Instrument,
    TimePasses,
    VerifyEach,
)
from nlpress.passes.base import option_default, option_fields, option_text, parse_dims

if TYPE_CHECKING:
    from nlpress.models.metrics import Fidelity

log = logging.getLogger("nlpress")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUDGET = 0, 1, 2, 3
# `nlpress passes` wraps each option's help to this many columns.
HELP_WIDTH = 100

__all__ = ["EXIT_BUDGET", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "BudgetNotMet", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="nlpress: %(message)s",
    )
    logging.getLogger("matplotlib").setLevel(logging.INFO)  # its font search logs at debug
    with removing_staging_on_signals():
        return _handle(args)


def _handle(args: argparse.Namespace) -> int:
    """Run the command's handler; every failure becomes one line and an exit code."""
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except Interrupted as exc:
        return _fail(args, f"interrupted by {exc}", exc.exit_code)
    except KeyboardInterrupt:
        return _fail(args, "interrupted by SIGINT", 128 + signal.SIGINT)
    except Exception as exc:
        signum = received_signal()
        if signum is not None:  # a native call turned the signal into its own error
            return _fail(args, f"interrupted by {signal.Signals(signum).name}", 128 + signum)
        if isinstance(exc, UsageError):
            return _fail(args, f"error: {exc}", EXIT_USAGE)
        if isinstance(exc, BudgetNotMet):
            return _fail(args, f"budget not met: {exc}; nothing was written", EXIT_BUDGET)
        if isinstance(exc, NlpressError):
            return _fail(args, f"error: {exc}", EXIT_FAILED)
        return _fail(args, f"internal error: {type(exc).__name__}: {exc}", EXIT_FAILED)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    if args.verbose:
        log.exception(message.splitlines()[0])
    else:
        print(f"nlpress: {message.splitlines()[0]}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------------------------
# commands


def _model_file(model: str) -> str | None:
    """The file a MODEL argument stands for: itself, or a zoo model's cached export."""
    if os.path.exists(model):
        return model
    return os.fspath(zoo.cache_dir() / f"{model}.onnx") if model in zoo.ZOO else None


def _input_files(args: argparse.Namespace) -> list[str | None]:
    """The files a build reads besides its model: build file, calibration, tokenizer."""
    tokenizer = args.tokenizer if args.tokenizer not in zoo.ZOO else None
    return [args.config, args.calibration_text, args.calibration, tokenizer]


def _shapes(args: argparse.Namespace) -> dict[str, tuple[int | str, ...]]:
    """The --shape flags by input name; the same input twice is a usage error."""
    return _unique(args.shape, "--shape")


def _unique(pairs: Sequence[tuple[str, Any]], flag: str) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for name, value in pairs:
        if name in given:
            raise UsageError(f"{flag} {name} is given twice; give each input once")
        given[name] = value
    return given


def _settings(args: argparse.Namespace, *names: str) -> tuple[BuildConfig, list[Any]]:
    """The build file (if any) and each named setting: the flag if given, else the file's."""
    config = load_config(args.config) if args.config else BuildConfig()
    return config, [getattr(args, name) or getattr(config, name) for name in names]


def _opt(args: argparse.Namespace) -> int:
    config, (model, pipeline, output, embedding) = _settings(
        args, "model", "pipeline", "output", "embedding"
    )
    if not (model and pipeline and output):
        raise UsageError("opt needs MODEL, -p PIPELINE and -o OUT.onnx (flags or build file)")
    inputs = [_model_file(model), *_input_files(args)]
    refuse_overwrite(output, inputs)
    check_writable(output)
    if args.report:
        _check_report(args.report, output, inputs)
    shapes = {**config.shape, **_shapes(args)}
    instruments, timer = _instruments(args)
    began = time.perf_counter()
    with _progress(args):
        result = compiler.optimize(
            model,
            pipeline,
            shapes,
            instruments,
            _calibration(args),
            report=args.report,
            embedding=embedding,
        )
        save_model(result.model, output)
    if timer:
        print(timer.report(), file=sys.stderr)
    for record in result.records:
        log.info("%s: changed=%s %s", record.text, record.changed, dict(record.stats))
    if not args.quiet:
        _say(overview(result.record, output, time.perf_counter() - began, args.report))
    return EXIT_OK


def _check_report(report: str, output: str, inputs: Sequence[str | None]) -> None:
    """Refuse a --report that would replace an input or the -o output; check it can be written."""
    if os.path.abspath(report) == os.path.abspath(output):
        raise UsageError(f"--report {report} is also the -o output; give the page another name")
    refuse_overwrite(report, [*inputs, output], flag="--report")
    check_writable(report)


def _compile(args: argparse.Namespace) -> int:
    config, (model, target, output) = _settings(args, "model", "target", "output")
    if not (model and target and output):
        raise UsageError("compile needs MODEL, -t TARGET and -o DIR (flags or build file)")
    options: dict[str, Any] = {
        "mcpu": args.mcpu or config.mcpu,
        "mattr": tuple(args.mattr) or config.mattr,
        "arch": args.arch or config.arch,
    }
    if args.budget is not None and (args.pipeline or config.pipeline):
        raise UsageError("give -p PIPELINE or --budget, not both: the budget chooses the pipeline")
    instruments, timer = _instruments(args)
    inputs = [_model_file(model), *_input_files(args), args.dump_ir, args.tuning_records]
    refuse_overwrite(output, inputs, folder=True)
    began = time.perf_counter()
    with _progress(args):
        path = compiler.compile(
            model,
            target,
            output,
            pipeline=args.pipeline or config.pipeline or "O1",
            shapes={**config.shape, **_shapes(args)},
            instruments=instruments,
            calibration=_calibration(args),
            tune=args.tune,
            tuning_records=args.tuning_records,
            board=cli_remote.board(args),
            pooling=args.pooling or config.pooling,
            normalize=args.normalize or config.normalize,
            tokenizer=config.tokenizer,
            embedding=args.embedding or config.embedding,
            budget=args.budget,
            objective=args.objective,
            **{k: v for k, v in options.items() if v},
        )
    if timer:
        print(timer.report(), file=sys.stderr)
    if not args.quiet:
        _say_built(Path(path), time.perf_counter() - began)
    print(path)
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    with _progress(args):
        found = compiler.plan(
            args.model,
            args.budget,
            args.objective,
            args.target,
            shapes=_shapes(args),
            calibration=_calibration(args),
            embedding=args.embedding,
        )
    if args.json:
        print(json.dumps(found.as_dict(), indent=2))
    else:
        print(found.describe())
    if found.chosen is None:
        raise BudgetNotMet("planner", "cosine", found.budget, found.cosine)
    return EXIT_OK


def _say_built(artifact: Path, seconds: float) -> None:
    """The build's overview and the kernel families it chose, on stderr."""
    from nlpress.targets import isa

    manifest = json.loads((artifact / "manifest.json").read_text())
    _say(overview(manifest, str(artifact), seconds, _report_page(artifact)))
    if manifest.get("code"):
        _say(f"  {'kernels':<11}{isa.describe(manifest['code'])}")


def _report_page(artifact: Path) -> str | None:
    page = artifact / "report.html"
    return str(page) if page.is_file() else None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _progress(args: argparse.Namespace) -> Iterator[None]:
    """Show the progress of long steps on stderr when it is a terminal, unless --quiet."""
    if args.quiet or not sys.stderr.isatty():
        yield
        return
    from nlpress.terminal import TerminalProgress

    with TerminalProgress(sys.stderr) as shown, reporting(shown):
        yield


def _bench(args: argparse.Namespace) -> int:
    from nlpress.targets.bench import compare_with_ort

    artifact = Path(args.artifact)
    if not (artifact / "manifest.json").is_file():
        raise UsageError(f"{artifact}: bench takes an artifact folder (from nlpress compile)")
    board = cli_remote.board(args)
    if board is not None:
        return _bench_on_board(args, artifact, board)
    if args.workload:
        return _bench_workload(args, artifact)
    shapes = _shapes(args)
    result = compare_with_ort(
        artifact, artifact / "model.onnx", shapes, runs=args.runs, threads=args.threads
    )
    result["vs_source"] = _source_agreement(artifact, shapes)
    if not args.vs_ort:
        dropped = ("ort", "ratio", "max_abs_diff", "worst", "cosine")
        result = {k: v for k, v in result.items() if not k.startswith(dropped)}
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(_bench_report(result, args.vs_ort))
    return EXIT_OK


def _bench_on_board(args: argparse.Namespace, artifact: Path, board: Any) -> int:
    """Time the artifact on a board of the key; its outputs against model.onnx here."""
    from nlpress.targets.remote import bench_on_board

    for flag, given in (("--vs-ort", args.vs_ort), ("--workload", args.workload)):
        if given:
            raise UsageError(f"{flag} runs here; with --rpc the artifact runs on a board")
    result = bench_on_board(artifact, board, _shapes(args), runs=args.runs)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in result["shapes"].items())
    print(f"board      {result['board']} ({result['servers']} servers under the key)")
    print(f"feeds      {shapes} (seeded random token ids, attention mask all ones)")
    print(
        f"nlpress    {result['nlpress_ms']:.2f} ms  median of {result['runs']} runs timed on the "
        f"board ({result['min_ms']:.2f} to {result['max_ms']:.2f}; {result['threads']} threads)"
    )
    print(
        f"vs graph   {_agreement_text(result['vs_graph'])}  (the board's outputs against "
        "model.onnx run as written in ONNX Runtime here)"
    )
    return EXIT_OK


def _bench_workload(args: argparse.Namespace, artifact: Path) -> int:
    """The sentences of --workload, --batch at a time, through the artifact and ORT."""
    from nlpress.models.feeds import workload_batches
    from nlpress.models.text import load_tokenizer, read_sentences
    from nlpress.targets.bench import compare_workload

    session, entry = compiler.open_session(artifact, threads=args.threads)
    path = _tokenizer_for(args, session, entry, "--workload")
    sentences = read_sentences(args.workload)
    longest = _longest_text(session, entry)
    batches = workload_batches(session, load_tokenizer(path), sentences, args.batch, longest)
    model = artifact / "model.onnx"
    result = compare_workload(artifact, model, batches, threads=args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(
        f"workload   {result['sentences']} sentences of {args.workload} in batches of "
        f"{args.batch}, each padded to its longest sentence"
    )
    for name, label in (("nlpress", "nlpress"), ("ort", "ORT")):
        r = result[name]
        print(
            f"{label:10} {r['sentences_per_s']:.1f} sentences/s, batch latency p50 "
            f"{r['p50_ms']:.1f} ms, p90 {r['p90_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
        )
    print(
        f"ratio      throughput {result['throughput_ratio']:.3f} (nlpress / ORT sentences/s), "
        f"p99 {result['p99_ratio']:.3f} (nlpress / ORT)"
    )
    cosines = ", ".join(f"{k} {v:.6f}" for k, v in result["least_cosine"].items())
    print(f"vs ORT     least pooled cosine {cosines} (model.so against model.onnx in ORT)")
    return EXIT_OK


def _source_agreement(artifact: Path, shapes: Mapping[str, Any]) -> dict[str, Any] | None:
    """The artifact against its float source in ORT, when the source is a cached zoo model."""
    from nlpress.targets import load
    from nlpress.targets.bench import agreement, bench_feeds

    session = load(artifact)
    name = session.manifest.get("source", {}).get("zoo")
    cached = zoo.cache_dir() / f"{name}.onnx" if isinstance(name, str) else None
    if name not in zoo.ZOO or cached is None or not cached.is_file():
        return None
    feeds = bench_feeds(session, shapes)
    try:
        source = load_model(cached)
        known = {t.name for t in source.graph.outputs}  # not what a pool pass added
        outputs = zip(session.get_outputs(), session.run(None, feeds), strict=True)
        shared = [(o.name, value) for o, value in outputs if o.name in known]
        found = agreement([n for n, _ in shared], [v for _, v in shared], source, feeds)
    except NlpressError as exc:  # the source takes other inputs or names its outputs otherwise
        log.info("no comparison with the source %s: %s", name, exc)
        return None
    return {"model": name, **found}


def _bench_report(result: Mapping[str, Any], vs_ort: bool) -> str:
    """The bench's figures, each line saying what it measured or compared."""
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in result["shapes"].items())
    runs = f"median of {result['runs']} runs"
    lines = [f"feeds      {shapes} (seeded random token ids, attention mask all ones)"]
    lines.append(f"nlpress    {result['nlpress_ms']:.2f} ms  {runs} of the artifact's model.so")
    if vs_ort:
        lines.append(
            f"ORT        {result['ort_ms']:.2f} ms  {runs} of its model.onnx in ONNX Runtime "
            f"(graph optimizations on, {result['threads']['onnxruntime']} threads)"
        )
        lines.append(f"ratio      {result['ratio']:.3f}  nlpress / ORT")
        lines.append(f"vs ORT     {_agreement_text(result)}  (model.so against that ORT run)")
    lines.append(
        f"vs graph   {_agreement_text(result['vs_graph'])}  (model.so against model.onnx run "
        "as written in ONNX Runtime, no fusions: what the manifest's fidelity checks)"
    )
    source = result.get("vs_source")
    if source:
        lines.append(
            f"vs source  {_agreement_text(source)}  (model.so against the float source "
            f"{source['model']} in ONNX Runtime)"
        )
    return "\n".join(lines)


def _agreement_text(found: Mapping[str, Any]) -> str:
    """The worst max abs diff, and the cosine of the embedding output (what budgets measure).

    `cosine` holds the float outputs; `embedding` names the one budgets measure, if any.
    """
    cosines = found.get("cosine") or {}
    name = found.get("embedding")
    cosine = f", {name} pooled cosine {cosines[name]:.6f}" if name in cosines else ""
    return f"max abs diff {found['worst']:.3g}{cosine}"


def _run(args: argparse.Namespace) -> int:
    paths = _unique(args.input, "--input")
    if not (paths or args.text):
        raise UsageError("run needs --input NAME=FILE.npy or --text")
    if paths and args.text:
        raise UsageError("run takes --input arrays or --text sentences, not both")
    session, entry = compiler.open_session(args.model, threads=args.threads)
    if args.save:
        names = [o.name for o in session.get_outputs()]
        saved = [Path(args.save) / f"{name}.npy" for name in names]
        for target in saved:
            refuse_overwrite(target, list(paths.values()), flag="--save")
    if args.text:
        return _run_text(args, session, entry)
    feeds = {name: _load_npy(path) for name, path in paths.items()}
    outputs = session.run(None, feeds)
    for node, value in zip(session.get_outputs(), outputs, strict=True):
        array = np.asarray(value)
        print(f"{node.name}: {array.dtype}[{','.join(map(str, array.shape))}] {_preview(array)}")
    _save_outputs(args, session, outputs)
    return EXIT_OK


def _run_text(args: argparse.Namespace, session: Any, entry: zoo.ZooModel | None) -> int:
    """Print each --text sentence's embedding: its shape, L2 norm and first values."""
    from nlpress.models.feeds import inputs_of, static_dims, text_feeds
    from nlpress.models.text import load_tokenizer, token_counts
    from nlpress.targets.encode import EncodeError, Encoder, encode, plan

    tokenizer = load_tokenizer(_tokenizer_for(args, session, entry, "--text"))
    longest = _longest_text(session, entry)
    counts = token_counts(tokenizer, args.text)
    _say_cut("--text", counts, longest, static_dims(session)[1] is not None, "text")
    manifest = getattr(session, "manifest", {})
    encoder = dataclasses.replace(Encoder.from_manifest(manifest), max_length=longest)
    try:
        print(plan(session, encoder).describe())
        embeddings = encode(session, tokenizer, args.text, encoder=encoder)
    except EncodeError as exc:
        raise UsageError(str(exc)) from exc
    for number, row in enumerate(embeddings, start=1):
        norm = float(np.linalg.norm(row.astype(np.float64)))
        print(f"text {number}: {row.dtype}[{row.shape[0]}] norm {norm:.6f} {_preview(row)}")
    if args.save:
        feeds = text_feeds(session, tokenizer, args.text, max_length=longest)
        _save_outputs(args, session, session.run(None, inputs_of(session, feeds)))
    return EXIT_OK


def _preview(array: np.ndarray) -> str:
    """The first six values, e.g. `[0.01234, -0.05678, ...]`."""
    head = np.array2string(array.ravel()[:6], precision=5, separator=", ")
    return head[:-1] + (", ...]" if array.size > 6 else "]")


def _save_outputs(args: argparse.Namespace, session: Any, outputs: Sequence[Any]) -> None:
    """Write every output as --save DIR/NAME.npy, when asked."""
    if not args.save:
        return
    for node, value in zip(session.get_outputs(), outputs, strict=True):
        with staging_file(Path(args.save) / f"{node.name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(value))


def _tokenizer_for(
    args: argparse.Namespace, session: Any, entry: zoo.ZooModel | None, flag: str
) -> str:
    """--tokenizer, else the artifact's own tokenizer.json, else the zoo model's."""
    from nlpress.targets.encode import Encoder

    carried = Encoder.from_manifest(getattr(session, "manifest", {})).tokenizer
    own = os.fspath(Path(session.path) / carried) if carried else None
    path = compiler.tokenizer_path(args.tokenizer, None) or own
    path = path or compiler.tokenizer_path(None, entry)
    if path is None:
        raise UsageError(f"{flag} needs --tokenizer for a model that is not from the zoo")
    return path


def _say_cut(flag: str, counts: Sequence[int], longest: int, static: bool, unit: str) -> None:
    """Say in one line which texts (by number) have more than `longest` tokens and are cut."""
    cut = [i for i, n in enumerate(counts, start=1) if n > longest]
    if not cut:
        return
    why = "the model's fixed sequence length" if static else "the longest the model takes"
    listed = ", ".join(map(str, cut[:MAX_LISTED])) + (", ..." if len(cut) > MAX_LISTED else "")
    many = f"{len(cut)} {unit}s" if len(cut) > MAX_LISTED else f"{unit}s"
    log.warning(
        "%s: %s %s of up to %d tokens cut to %d, %s",
        flag,
        unit if len(cut) == 1 else many,
        listed,
        max(counts),
        longest,
        why,
    )


MAX_LISTED = 10  # the cut texts a warning names by number


def _longest_text(session: Any, entry: zoo.ZooModel | None) -> int:
    """The sequence length texts are cut to: the artifact's recorded one, else `zoo.text_length`."""
    from nlpress.models.feeds import static_dims
    from nlpress.targets.encode import Encoder

    recorded = Encoder.from_manifest(getattr(session, "manifest", None) or {}).max_length
    if recorded is not None:
        return recorded

    shape = list(session.get_inputs()[0].shape or [])
    dim = shape[1] if len(shape) > 1 else None
    limits = compiler.dim_limits_of(session)
    limit = limits[dim][0] if isinstance(dim, str) and dim in limits else None
    return zoo.text_length(static_dims(session)[1], limit, entry)


def _load_npy(path: str) -> np.ndarray:
    """An array from a .npy file, or one line saying why the file is not one."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic != b"\x93NUMPY":
                what = "an .npz archive" if magic.startswith(b"PK") else "not a .npy file"
                raise NlpressError(f"{path}: {what} (a .npy file starts with \\x93NUMPY)")
            f.seek(0)
            return np.asarray(np.load(f, allow_pickle=False))
    except OSError as exc:
        raise NlpressError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (ValueError, EOFError) as exc:
        raise NlpressError(f"{path}: not a readable .npy array ({first_line(exc)})") from exc


def _input_flag(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=FILE.npy")
    return name, path


def _inspect(args: argparse.Namespace) -> int:
    path = Path(args.model)
    manifest = None
    if path.is_dir():
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise NlpressError(f"{path}: not an nlpress artifact (no manifest.json)")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise NlpressError(f"{manifest_path}: unreadable manifest ({first_line(exc)})") from exc
        path = path / "model.onnx"
    summary = summarize(compiler.resolve_model(path if manifest else args.model).model)
    if manifest is not None:
        summary["manifest"] = manifest
    if args.json:
        print(json.dumps(summary, indent=2))
    elif manifest is not None:
        print(overview(manifest, args.model, report=_report_page(Path(args.model))))
        print(format_summary(summary))
    else:
        print(format_summary(summary))
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    texts = [dump_text(compiler.resolve_model(m).model) for m in (args.a, args.b)]
    sys.stdout.write(diff_text(texts[0], texts[1], args.a, args.b))
    return EXIT_OK


def _eval(args: argparse.Namespace) -> int:
    from nlpress.models.feeds import static_dims
    from nlpress.models.metrics import fidelity, sentence_fidelity
    from nlpress.models.text import evaluation_pairs, load_tokenizer, read_eval_text, token_counts

    reference, entry = compiler.open_session(args.reference)
    candidate, candidate_entry = compiler.open_session(args.candidate)
    path = compiler.tokenizer_path(args.tokenizer, entry)
    if path is None:
        raise UsageError("eval needs --tokenizer when the reference is not a zoo model")
    tokenizer = load_tokenizer(path)
    sessions = ((candidate, candidate_entry), (reference, entry))
    longest = min(_longest_text(s, e) for s, e in sessions)
    static = any(static_dims(s)[1] == longest for s, _ in sessions)
    text = read_eval_text(args.text) if args.text else evaluation_pairs()
    flag, lines = (f"--text {args.text}", "line") if args.text else ("eval", "pair")
    result: Fidelity
    if all(isinstance(t, str) for t in text):
        sentences = [t for t in text if isinstance(t, str)]
        _say_cut(flag, token_counts(tokenizer, sentences), longest, static, lines)
        result = sentence_fidelity(
            candidate, reference, tokenizer, sentences, longest, args.embedding
        )
    else:
        pairs = [t for t in text if isinstance(t, tuple)]
        firsts = token_counts(tokenizer, [a for a, _ in pairs])
        seconds = token_counts(tokenizer, [b for _, b in pairs])
        counts = [max(a, b) for a, b in zip(firsts, seconds, strict=True)]
        _say_cut(flag, counts, longest, static, lines)
        result = fidelity(candidate, reference, tokenizer, longest, pairs, args.embedding)
    _print_fidelity(args.text or "evaluation text", result, args.json)
    return EXIT_OK


def _print_fidelity(text: str, result: Fidelity, as_json: bool) -> None:
    """The eval's scores, one per line, or as JSON with the per-sentence cosines."""
    if as_json:
        print(json.dumps({"text": text, **result.as_dict()}, indent=2))
        return
    print(f"{'text':<22} {text}")
    for key, value in {**result.scores(), **result.as_dict()["distribution"]}.items():
        if value is not None:
            print(f"{key:<22} {value}" if isinstance(value, int) else f"{key:<22} {value:.6f}")


def _passes(args: argparse.Namespace) -> int:
    for name, cls in PASSES.items():
        print(f"{name}: {cls.summary()}")
        helps = cls.option_help()
        for key, f in option_fields(cls).items():
            default = option_text(f, option_default(f))
            text = f"{key} (default {default or 'none'}): {helps.get(key, '')}"
            print(
                textwrap.fill(text, HELP_WIDTH, initial_indent=" " * 4, subsequent_indent=" " * 8)
            )
    print("named pipelines:")
    for name, text in NAMED_PIPELINES.items():
        print(f"    {name} = {text}")
    return EXIT_OK


def _models_list(args: argparse.Namespace) -> int:
    for entry in zoo.ZOO.values():
        size = zoo.cached_bytes(entry.name)
        cached = f"{size / 1e6:.1f} MB, cached" if size else "not exported yet"
        print(f"{entry.name:<22} {entry.description}")
        print(f"{'':<22} {cached}; {entry.source}")
    return EXIT_OK


def _models_get(args: argparse.Namespace) -> int:
    source = zoo.model_path(zoo.get(args.name).name)
    refuse_overwrite(args.output, [source])
    copy_file(source, args.output)
    print(args.output)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# argument parsing


def _instruments(args: argparse.Namespace) -> tuple[list[Instrument], TimePasses | None]:
    instruments: list[Instrument] = []
    if args.dump_ir:
        instruments.append(DumpIR(args.dump_ir))
    if args.verify_each:
        instruments.append(VerifyEach())
    timer = TimePasses() if args.time_passes else None
    if timer:
        instruments.append(timer)
    return instruments, timer


def _calibration(args: argparse.Namespace) -> compiler.Calibration:
    return compiler.Calibration(args.calibration_text, args.tokenizer, args.calibration)


def _budget(text: str) -> float:
    """`cosine=X`: the least mean output cosine a plan must keep."""
    key, sep, value = text.partition("=")
    try:
        cosine = float(value) if sep and key == "cosine" else -1.0
    except ValueError:
        cosine = -1.0
    if not 0.0 < cosine < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected cosine=X with 0 < X < 1")
    return cosine


def _add_budget_flags(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--budget",
        type=_budget,
        required=required,
        metavar="cosine=X",
        help="the least mean output cosine to the model on held-out calibration text; the "
        "planner chooses per layer between float, int8, 4-bit, neurons and heads removed",
    )
    p.add_argument(
        "--objective",
        choices=["latency", "size"],
        default="latency",
        help="what the plan makes least within the budget (default latency)",
    )


def _count(text: str) -> int:
    """A positive whole number, e.g. of runs or trials."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive whole number")
    return value


def _shape_flag(text: str) -> tuple[str, tuple[int | str, ...]]:
    name, sep, dims = text.partition("=")
    if not sep or not name or not dims:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=DIMS, e.g. input_ids=1x128")
    try:
        return name, parse_dims(dims)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_threads,
        default=0,
        metavar="N",
        help="CPU threads of the artifact's kernels (default 0: one per CPU this process may use)",
    )


def _threads(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a thread count, 0 or more")
    return int(text)


def _add_quiet_flag(p: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="no progress and no summary on stderr (errors still print)",
    )


def _add_shape_flag(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument(
        "--shape",
        action="append",
        default=[],
        type=_shape_flag,
        help=help_text,
        metavar="NAME=DIMS",
    )


def _add_embedding_flag(p: argparse.ArgumentParser, purpose: str) -> None:
    p.add_argument(
        "--embedding",
        metavar="NAME",
        help=f"{purpose} (default: the one float output shaped [batch, sequence, hidden], "
        "else [batch, hidden])",
    )


def _add_pipeline_flags(p: argparse.ArgumentParser) -> None:
    _add_shape_flag(p, "fix an input's dims for every pass and the lowering (repeatable)")
    p.add_argument("--config", metavar="FILE", help="a TOML build file ([build] table)")
    p.add_argument(
        "--tokenizer",
        metavar="ZOO-NAME|tokenizer.json",
        help="the tokenizer for --calibration-text; compile copies it into the artifact "
        "(zoo models bring their own)",
    )
    p.add_argument(
        "--calibration-text",
        metavar="FILE",
        help="calibration sentences, one per line, for passes that need data",
    )
    p.add_argument(
        "--calibration",
        metavar="FEEDS.npz",
        help="calibration feeds: input arrays sharing their first (batch) axis",
    )
    _add_embedding_flag(p, "the output that budgets and fidelity measure; recorded in the result")
    p.add_argument("--dump-ir", metavar="DIR", help="write a text dump and a diff per pass")
    p.add_argument("--time-passes", action="store_true", help="print each pass's time")
    p.add_argument(
        "--verify-each",
        action="store_true",
        help="check and compare outputs in ONNX Runtime after every pass",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line naming the command's --help."""

    def error(self, message: str) -> NoReturn:
        """Print one line and exit 2."""
        self.exit(EXIT_USAGE, f"nlpress: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nlpress", description="Compile NLP models smaller and faster.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details; tracebacks")
    _add_quiet_flag(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "compile",
        help="optimize a model and lower it to an artifact folder",
        usage="nlpress compile MODEL -t TARGET -o DIR [options]   (or from --config FILE)",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="an ONNX file or a zoo name")
    p.add_argument("-t", "--target", help="x86, arm or cuda")
    p.add_argument("-p", "--pipeline", help="pipeline text or a named pipeline (default O1)")
    p.add_argument("-o", "--output", metavar="DIR")
    p.add_argument("--mcpu", help="CPU to generate code for (x86: detected by default)")
    p.add_argument("--mattr", action="append", default=[], help="target feature, e.g. +dotprod")
    p.add_argument("--arch", help="CUDA architecture, e.g. sm_90")
    p.add_argument(
        "--tune",
        type=_count,
        default=0,
        metavar="TRIALS",
        help="tune the kernels with MetaSchedule for this many trials first",
    )
    p.add_argument(
        "--tuning-records",
        metavar="DIR",
        help="where tuning records are kept; a later compile reuses them",
    )
    cli_remote.add_board_flags(p, "measure --tune's candidates")
    p.add_argument(
        "--pooling",
        choices=["mean", "cls", "model"],
        help="add a sentence_embedding output pooled from the embedding output's tokens "
        "(model: as a sentence-transformers folder pools, normalization included)",
    )
    p.add_argument(
        "--normalize", action="store_true", help="L2-normalize the pooled sentence_embedding"
    )
    _add_budget_flags(p, required=False)
    _add_pipeline_flags(p)
    p.set_defaults(handler=_compile)

    p = sub.add_parser(
        "plan",
        help="print the frontier of per-layer plans and the one that meets a budget",
        usage="nlpress plan MODEL --budget cosine=X [--objective latency|size] [options]",
    )
    p.add_argument("model", metavar="MODEL", help="an ONNX file or a zoo name")
    p.add_argument("-t", "--target", default="x86", help="x86 (kernels timed), arm or cuda")
    _add_budget_flags(p, required=True)
    _add_shape_flag(p, "fix an input's dims; the kernels are timed at batch x sequence rows")
    p.add_argument("--tokenizer", metavar="ZOO-NAME|tokenizer.json", help="for --calibration-text")
    p.add_argument("--calibration-text", metavar="FILE", help="sentences, one per line")
    p.add_argument("--calibration", metavar="FEEDS.npz", help="calibration feeds")
    _add_embedding_flag(p, "the output the budget measures")
    p.add_argument("--json", action="store_true", help="print the plan and frontier as JSON")
    p.set_defaults(handler=_plan)

    p = sub.add_parser(
        "opt",
        help="run a pipeline of passes on a model",
        usage="nlpress opt MODEL -p PIPELINE -o OUT.onnx [options]   (or from --config FILE)",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="an ONNX file or a zoo name")
    p.add_argument("-p", "--pipeline", help="pipeline text or a named pipeline")
    p.add_argument("-o", "--output", metavar="OUT.onnx")
    p.add_argument(
        "--report",
        metavar="FILE.html",
        help="also write an HTML page of the run: passes, sizes, per-layer decisions",
    )
    _add_pipeline_flags(p)
    p.set_defaults(handler=_opt)

    p = sub.add_parser("run", help="run an artifact (TVM) or a model (ONNX Runtime) on inputs")
    p.add_argument("model", metavar="DIR|MODEL")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        type=_input_flag,
        metavar="NAME=FILE.npy",
        help="an input array (repeatable)",
    )
    p.add_argument("--text", action="append", default=[], help="a sentence (repeatable)")
    p.add_argument("--tokenizer", metavar="ZOO-NAME|tokenizer.json")
    p.add_argument("--save", metavar="DIR", help="also write every output as NAME.npy")
    _add_threads_flag(p)
    p.set_defaults(handler=_run)

    p = sub.add_parser("bench", help="time an artifact, beside ONNX Runtime with --vs-ort")
    p.add_argument("artifact", metavar="DIR")
    p.add_argument(
        "--vs-ort",
        action="store_true",
        help="also time ONNX Runtime (as many threads) on the artifact's model.onnx",
    )
    _add_threads_flag(p)
    p.add_argument(
        "--workload",
        metavar="FILE",
        help="time the sentences of FILE (one per line) instead, through the artifact and ORT",
    )
    p.add_argument("--batch", type=_count, default=1, help="sentences per --workload batch")
    p.add_argument("--tokenizer", metavar="ZOO-NAME|tokenizer.json", help="for --workload")
    p.add_argument("--runs", type=_count, default=20, help="timed runs of each (default 20)")
    _add_shape_flag(p, "dims of an input; symbolic dims default to 1 (first axis) and 128")
    cli_remote.add_board_flags(p, "run and time the artifact")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_bench)

    p = sub.add_parser("inspect", help="ops, parameters, bytes, sparsity, inputs and outputs")
    p.add_argument("model", metavar="MODEL|DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_inspect)

    p = sub.add_parser("diff", help="diff the text dumps of two models")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.set_defaults(handler=_diff)

    p = sub.add_parser("eval", help="fidelity of a candidate against a reference model")
    p.add_argument("candidate", metavar="CANDIDATE", help="an ONNX file, zoo name or artifact")
    p.add_argument("--reference", required=True, metavar="MODEL")
    p.add_argument(
        "--text",
        metavar="FILE",
        help="sentences one per line, or tab-separated pairs (default: the evaluation pairs)",
    )
    p.add_argument("--tokenizer", metavar="ZOO-NAME|tokenizer.json")
    _add_embedding_flag(p, "the output compared in both models")
    p.add_argument("--json", action="store_true", help="also per-sentence cosines")
    p.set_defaults(handler=_eval)

    p = sub.add_parser("passes", help="every registered pass with its options and defaults")
    p.set_defaults(handler=_passes)

    p = sub.add_parser("models", help="the model zoo")
    models = p.add_subparsers(dest="models_command", required=True, metavar="list|get")
    q = models.add_parser("list", help="list the zoo's models")
    q.set_defaults(handler=_models_list)
    q = models.add_parser("get", help="write a zoo model to a file")
    q.add_argument("name", metavar="NAME")
    q.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    q.set_defaults(handler=_models_get)
    remote_commands = cli_remote.add_commands(sub)
    for command in (*sub.choices.values(), *models.choices.values(), *remote_commands):
        _add_quiet_flag(command)
    return parser


if __name__ == "__main__":
    sys.exit(main())
