"""What a person sees on a terminal: progress while long steps run, a summary, none with --quiet."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

SLOW_STEP = """
import sys, time
from nlpress.ir.progress import reporting, step, steps
from nlpress.terminal import TerminalProgress
with TerminalProgress(sys.stderr) as shown, reporting(shown):
    with step("a long step"):
        for _ in steps(range(3), "inner units"):
            time.sleep(1.0)
"""


def _on_a_terminal(command: list[str], cwd: Path | None = None) -> list[tuple[float, str]]:
    """Run `command` with a pseudo-terminal as its stdout and stderr; (seconds, text) chunks."""
    main, child = pty.openpty()
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=child, stderr=child, stdin=child, cwd=cwd)
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 0.1)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                data = b""
            if not data:
                break
            chunks.append((time.perf_counter() - began, data.decode(errors="replace")))
        elif process.poll() is not None:
            break
    process.wait(timeout=60)
    os.close(main)
    assert process.returncode == 0, "".join(text for _, text in chunks)
    return chunks


def _first_seen(chunks: list[tuple[float, str]], text: str) -> float:
    seen = ""
    for when, chunk in chunks:
        seen += chunk
        if text in seen:
            return when
    raise AssertionError(f"{text!r} never appeared in {seen!r}")


def test_a_long_step_shows_within_two_seconds_and_its_clock_moves() -> None:
    chunks = _on_a_terminal([sys.executable, "-c", SLOW_STEP])
    started = _first_seen(chunks, "a long step")
    assert _first_seen(chunks, "inner units") - started < 2.0
    assert _first_seen(chunks, "0:00:01") - started < 2.5  # redrawn while the step runs
    assert _first_seen(chunks, "2/3") < chunks[-1][0]


def _nlpress(*args: str) -> list[str]:
    return [sys.executable, "-m", "nlpress.cli", *args]


@pytest.fixture(scope="module")
def terminal_build(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("build") / "int8"
    chunks = _on_a_terminal(
        _nlpress("compile", "bert-tiny-random", "-t", "x86", "-p", "int8", "-o", str(out))
    )
    return "".join(text for _, text in chunks)


def test_compile_on_a_terminal_shows_its_steps_then_a_summary(terminal_build: str) -> None:
    for label in ("quantize-insert", "calibration batches", "lowering: schedule the kernels"):
        assert label in terminal_build
    summary = terminal_build[terminal_build.rindex("compiled bert-tiny-random") :]
    for line in ("pipeline", "size", "checked", "budget", "kernels"):
        assert f"\n  {line}" in summary.replace("\r", "")
    assert "budget-cosine 0.997 met" in summary


def test_quiet_opt_prints_nothing_on_a_terminal(tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    args = ("opt", "bert-tiny-random", "-p", "int8", "-o", str(out), "--quiet")
    assert "".join(text for _, text in _on_a_terminal(_nlpress(*args))) == ""
    assert out.is_file()


def test_without_a_terminal_there_is_no_progress_but_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    args = ("opt", "bert-tiny-random", "-p", "int8", "-o", str(out))
    done = subprocess.run(_nlpress(*args), capture_output=True, text=True, check=True)
    assert done.stdout == ""
    assert "calibration batches" not in done.stderr and "\x1b[" not in done.stderr
    assert re.match(rf"optimized bert-tiny-random in \d+ s: {re.escape(str(out))}\n", done.stderr)
    assert "budget-cosine 0.997 met" in done.stderr
    assert "weights " in done.stderr and "parameters" in done.stderr
