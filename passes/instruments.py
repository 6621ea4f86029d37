"""Running a pipeline, and the instruments that watch it: IR dumps, pass timing, verification.

Passes never print; an instrument sees each pass's input and result and records what it saw.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nlpress.ir import Feeds, Model, VerificationError
from nlpress.ir.dump import diff_text, dump_text
from nlpress.ir.progress import step
from nlpress.ir.staging import OutputError
from nlpress.ir.verify import compare, make_feeds
from nlpress.passes.base import Pass, PassResult
from nlpress.passes.pipeline import Pipeline
from nlpress.passes.stats import readable_stats

log = logging.getLogger(__name__)


class Instrument:
    """Hooks around every pass of a pipeline run; the default hooks do nothing."""

    def start(self, model: Model, pipeline: Pipeline) -> None:
        """Called once before the first pass."""

    def before(self, index: int, p: Pass, model: Model) -> None:
        """Called before pass number `index` (from 1) runs on `model`."""

    def after(self, index: int, p: Pass, before: Model, result: PassResult) -> None:
        """Called after the pass returned `result`."""


@dataclass(frozen=True)
class PassRecord:
    """One pass's run: its canonical text, whether it changed the graph, its stats, its time."""

    text: str
    changed: bool
    stats: Mapping[str, float]
    seconds: float

    def as_manifest(self) -> dict[str, Any]:
        """The record as manifests write it: per-layer stats nested, counts as ints."""
        return {
            "text": self.text,
            "changed": self.changed,
            "stats": readable_stats(self.stats),
            "seconds": round(self.seconds, 6),
        }


@dataclass(frozen=True)
class PipelineResult:
    """The final model and a record of every pass."""

    model: Model
    records: tuple[PassRecord, ...]

    @property
    def changed(self) -> bool:
        """Whether any pass changed the graph."""
        return any(r.changed for r in self.records)


def run_pipeline(
    model: Model,
    pipeline: Pipeline,
    instruments: Sequence[Instrument] = (),
    data: Sequence[Feeds] = (),
) -> PipelineResult:
    """Run every pass in order on `model`, handing each the calibration batches `data`.

    The input model is never modified.
    Conflicts between passes are found before the first pass runs; each pass's preconditions on
    the model it receives are checked right before it runs.
    """
    for index, p in enumerate(pipeline):
        p.check_order(pipeline.passes[:index])
    for instrument in instruments:
        instrument.start(model, pipeline)
    records = []
    for index, p in enumerate(pipeline, start=1):
        p.requires(model)
        for instrument in instruments:
            instrument.before(index, p, model)
        began = time.perf_counter()
        with step(p.name):
            result = p.run(model, data)
        seconds = time.perf_counter() - began
        p.ensures(result.model)
        for instrument in instruments:
            instrument.after(index, p, model, result)
        records.append(PassRecord(str(p), result.changed, dict(result.stats), seconds))
        log.debug("%s: changed=%s in %.3f s", p.name, result.changed, seconds)
        model = result.model
    return PipelineResult(model, tuple(records))


class DumpIR(Instrument):
    """Writes `00-input.txt`, then `NN-<pass>.txt` and `NN-<pass>.diff` for every pass."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._last = ""

    def start(self, model: Model, pipeline: Pipeline) -> None:
        """Dump the input model."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"--dump-ir {self.directory}: cannot write there ({exc.strerror or exc})"
            ) from exc
        self._last = dump_text(model)
        header = f"# pipeline: {pipeline}\n"
        (self.directory / "00-input.txt").write_text(header + self._last)

    def after(self, index: int, p: Pass, before: Model, result: PassResult) -> None:
        """Dump the pass's output and its diff against the previous dump."""
        text = dump_text(result.model)
        stem = f"{index:02d}-{p.name}"
        (self.directory / f"{stem}.txt").write_text(f"# pass: {p}\n" + text)
        diff = diff_text(self._last, text, "before", f"after {p.name}")
        (self.directory / f"{stem}.diff").write_text(f"# pass: {p}\n" + diff)
        self._last = text


@dataclass
class TimePasses(Instrument):
    """Collects each pass's wall time; `report()` formats them as a table."""

    seconds: list[tuple[str, float]] = field(default_factory=list)
    _began: float = 0.0

    def before(self, index: int, p: Pass, model: Model) -> None:
        """Start the clock."""
        self._began = time.perf_counter()

    def after(self, index: int, p: Pass, before: Model, result: PassResult) -> None:
        """Stop the clock."""
        self.seconds.append((p.name, time.perf_counter() - self._began))

    def report(self) -> str:
        """A table of pass times, with the total."""
        total = sum(s for _, s in self.seconds)
        lines = [f"{'pass':<24} {'seconds':>9}"]
        lines += [f"{name:<24} {s:>9.3f}" for name, s in self.seconds]
        lines.append(f"{'total':<24} {total:>9.3f}")
        return "\n".join(lines)


@dataclass
class VerifyEach(Instrument):
    """After every pass, runs the checker and compares outputs with the pass's input in ORT.

    Exact passes must stay within their stated tolerance on the given (or generated) feeds; lossy
    passes (tolerance None) must still produce outputs of the same names and shapes; passes
    that add outputs are compared on the outputs they kept.
    """

    feeds: Sequence[Mapping[str, np.ndarray]] = ()
    worst: dict[str, float] = field(default_factory=dict)

    def start(self, model: Model, pipeline: Pipeline) -> None:
        """Generate feeds when none were given."""
        if not self.feeds:
            self.feeds = [make_feeds(model, seed=0)]

    def after(self, index: int, p: Pass, before: Model, result: PassResult) -> None:
        """Compare the pass's output with its input."""
        comparison = compare(before, result.model, self.feeds, added_outputs=p.adds_outputs)
        self.worst[p.name] = comparison.worst
        if p.tolerance is not None and comparison.worst > p.tolerance:
            raise VerificationError(
                f"pass {p.name} changed outputs by {comparison.worst:.3g} "
                f"(its tolerance is {p.tolerance:g})"
            )
