"""What a person sees on a terminal: progress while long steps run, a summary, none with --quiet."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from commands import nlpress_argv, on_a_terminal

SLOW_STEP = """
import sys, time
from nlpress.ir.progress import reporting, step, steps
from nlpress.terminal import TerminalProgress
with TerminalProgress(sys.stderr) as shown, reporting(shown):
    with step("a long step"):
        for _ in steps(range(3), "inner units"):
            time.sleep(1.0)
"""


def _first_seen(chunks: list[tuple[float, str]], text: str) -> float:
    seen = ""
    for when, chunk in chunks:
        seen += chunk
        if text in seen:
            return when
    raise AssertionError(f"{text!r} never appeared in {seen!r}")


def test_a_long_step_shows_within_two_seconds_and_its_clock_moves() -> None:
    chunks = on_a_terminal([sys.executable, "-c", SLOW_STEP])
    started = _first_seen(chunks, "a long step")
    assert _first_seen(chunks, "inner units") - started < 2.0
    assert _first_seen(chunks, "0:00:01") - started < 2.5  # redrawn while the step runs
    assert _first_seen(chunks, "2/3") < chunks[-1][0]


def test_compile_on_a_terminal_shows_its_steps_then_a_summary(
    int8_on_a_terminal: tuple[Path, str],
) -> None:
    _, shown = int8_on_a_terminal
    for label in ("quantize-insert", "calibration batches", "lowering: schedule the kernels"):
        assert label in shown
    summary = shown[shown.rindex("compiled bert-tiny-random") :]
    for line in ("pipeline", "size", "checked", "budget", "kernels"):
        assert f"\n  {line}" in summary.replace("\r", "")
    assert "budget-cosine 0.997 met" in summary


def test_quiet_opt_prints_nothing_on_a_terminal(tmp_path: Path, calibration_text: Path) -> None:
    """Calibration batches and a summary would be shown without --quiet."""
    out = tmp_path / "int8.onnx"
    args = ("opt", "bert-tiny-random", "-p", "int8", "-o", out, "--quiet")
    shown = on_a_terminal(nlpress_argv(*args, "--calibration-text", calibration_text))
    assert "".join(text for _, text in shown) == ""
    assert out.is_file()


def test_without_a_terminal_there_is_no_progress_but_the_summary(
    opt_int8_report: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    folder, done = opt_int8_report
    out = folder / "o.onnx"
    assert done.stdout == ""
    assert "calibration batches" not in done.stderr and "\x1b[" not in done.stderr
    assert re.match(rf"optimized bert-tiny-random in \d+ s: {re.escape(str(out))}\n", done.stderr)
    assert "budget-cosine 0.997 met" in done.stderr
    assert "weights " in done.stderr and "parameters" in done.stderr
