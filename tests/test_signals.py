"""SIGINT and SIGTERM at several points of a compile, in a subprocess: nothing is left behind.

A point is something the compile makes that the test can see: the IR dump of the input (the
pipeline has started, in Python), the dump after fold, the artifact's staging folder (lowering
in TVM's native code, where the main thread does not see the signal until the watcher steps
in), and the library inside it (linking done, the fidelity check running).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nlpress.ir import file_sha256

Point = Callable[[Path, Path], bool]


def _dumped(name: str) -> Point:
    return lambda out, dumps: (dumps / name).is_file()


def _staging(out: Path) -> list[Path]:
    if not out.parent.is_dir():
        return []
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def _lowering(out: Path, dumps: Path) -> bool:
    return bool(_staging(out))


def _linked(out: Path, dumps: Path) -> bool:
    return any((p / "model.so").is_file() for p in _staging(out) if p.is_dir())


POINTS: dict[str, Point] = {
    "pipeline-started": _dumped("00-input.txt"),
    "fold-done": _dumped("01-fold.txt"),
    "lowering": _lowering,
    "linked": _linked,
}


def _compile(model: Path, out: Path, dumps: Path) -> subprocess.Popen[str]:
    argv = ["compile", os.fspath(model), "-t", "x86", "-o", os.fspath(out)]
    return subprocess.Popen(
        [sys.executable, "-m", "nlpress.cli", *argv, "--dump-ir", os.fspath(dumps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_at(
    model: Path, out: Path, dumps: Path, point: Point, signum: int
) -> tuple[int, str, float]:
    """Start a compile, send `signum` when `point` is reached; the exit status, stderr, time."""
    process = _compile(model, out, dumps)
    deadline = time.monotonic() + 300
    while not point(out, dumps):
        assert process.poll() is None, f"the compile ended first: {process.communicate()[1]}"
        assert time.monotonic() < deadline, "the point never came"
        time.sleep(0.01)
    sent = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    return process.returncode, err, time.monotonic() - sent


def _nlpress_lines(stderr: str) -> list[str]:
    """stderr's lines, less the held-out fidelity line that compile prints before lowering."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(HELDOUT)]


HELDOUT = "fidelity on "


@pytest.mark.parametrize(
    ("point", "signum"),
    [
        ("pipeline-started", signal.SIGTERM),
        ("fold-done", signal.SIGINT),
        ("lowering", signal.SIGTERM),
        pytest.param("lowering", signal.SIGINT, marks=pytest.mark.slow),
        pytest.param("linked", signal.SIGTERM, marks=pytest.mark.slow),
        pytest.param("linked", signal.SIGINT, marks=pytest.mark.slow),
    ],
)
def test_a_signal_mid_compile_leaves_nothing(
    tiny_bert_path: Path, tmp_path: Path, point: str, signum: int
) -> None:
    out, dumps = tmp_path / "build" / "art", tmp_path / "dumps"
    code, err, seconds = _kill_at(tiny_bert_path, out, dumps, POINTS[point], signum)
    assert code == 128 + signum, err
    assert _nlpress_lines(err) == [f"nlpress: interrupted by {signal.Signals(signum).name}"]
    assert seconds < 30, "the compile went on after the signal"
    assert not (tmp_path / "build").exists() or os.listdir(tmp_path / "build") == []


@pytest.mark.slow
def test_a_signal_keeps_the_old_artifact_and_a_killed_run_is_swept(
    tiny_bert_path: Path, tmp_path: Path
) -> None:
    out, dumps = tmp_path / "art", tmp_path / "dumps"
    done = _compile(tiny_bert_path, out, dumps)
    assert done.wait(timeout=600) == 0, done.communicate()[1]
    before = {p.name: file_sha256(p) for p in out.iterdir()}
    code, err, _ = _kill_at(tiny_bert_path, out, dumps, _linked, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert {p.name: file_sha256(p) for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["art", "dumps"]

    code, _, _ = _kill_at(tiny_bert_path, out, dumps, _linked, signal.SIGKILL)
    assert code == -signal.SIGKILL
    [left] = _staging(out)  # a killed process cleans nothing: its pid names what it left
    assert left.name.split(".")[2].isdigit()
    again = _compile(tiny_bert_path, out, dumps)
    assert again.wait(timeout=600) == 0, again.communicate()[1]
    assert sorted(os.listdir(tmp_path)) == ["art", "dumps"]
    assert json.loads((out / "manifest.json").read_text())["library"]["sha256"]
