import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nlpress.ir import UsageError
from nlpress.ir.staging import (
    Interrupted,
    OutputError,
    check_writable,
    critical,
    refuse_overwrite,
    remove_stale,
    removing_staging_on_signals,
    replace_dir,
    staging_dir,
    staging_file,
    umask,
)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_staged_file_is_renamed_with_the_umask_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.onnx"
    with staging_file(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(f".out.onnx.{os.getpid()}.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask()
    assert os.listdir(target.parent) == ["out.onnx"]


def test_a_failed_block_leaves_the_old_file_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), staging_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("stop")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.onnx"]


def test_a_staged_folder_replaces_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "art"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staging_dir(target) as staging:
        (staging / "new.txt").write_text("new")
        replace_dir(staging, target)
    assert os.listdir(target) == ["new.txt"]
    assert os.listdir(tmp_path) == ["art"]


def test_stale_staging_of_dead_processes_is_removed(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getppid()
    target = tmp_path / "art"
    stale_dir = tmp_path / f".art.{dead}.abcd1234.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.so").write_bytes(b"x")
    stale_old = tmp_path / f".art.{dead}.zz99yy88.old"
    stale_old.mkdir()
    live = tmp_path / f".art.{alive}.abcd1234.tmp"
    live.mkdir()
    other = tmp_path / f".other.{dead}.abcd1234.tmp"
    other.write_text("not ours to judge")
    mine = tmp_path / ".art.notapid.tmp"
    mine.write_text("not a staging name")
    assert sorted(remove_stale(target)) == sorted([stale_dir, stale_old])
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (live, other, mine))


def test_the_next_staging_sweeps_what_a_dead_process_left(tmp_path: Path) -> None:
    stale = tmp_path / f".out.onnx.{_dead_pid()}.abcd1234.tmp"
    stale.write_bytes(b"half")
    with staging_file(tmp_path / "out.onnx") as tmp:
        tmp.write_bytes(b"whole")
    assert os.listdir(tmp_path) == ["out.onnx"]


def test_outputs_that_cannot_be_written_are_named_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for target, words in [
        (Path("/proc/out.onnx"), "cannot write there"),
        (tmp_path / "file" / "deeper" / "out.onnx", "is not a folder"),
        (tmp_path, "is a folder"),
    ]:
        with pytest.raises(OutputError, match=words):
            check_writable(target)
    check_writable(tmp_path / "new" / "folder" / "out.onnx")
    assert os.listdir(tmp_path) == ["file"]  # nothing created


def test_outputs_onto_inputs_are_refused_through_links(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"m")
    (tmp_path / "soft.onnx").symlink_to(model)
    os.link(model, tmp_path / "hard.onnx")
    for output in ("model.onnx", "soft.onnx", "hard.onnx"):
        with pytest.raises(UsageError, match="is the input"):
            refuse_overwrite(tmp_path / output, [model])
    with pytest.raises(UsageError, match="holds the input"):
        refuse_overwrite(tmp_path, [model], folder=True)
    refuse_overwrite(tmp_path / "other.onnx", [model, None])
    refuse_overwrite(tmp_path / "art", [model], folder=True)


def test_a_signal_removes_the_staging_and_restores_the_handlers(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with (
        pytest.raises(Interrupted) as caught,
        removing_staging_on_signals(),
        staging_dir(tmp_path / "art") as staging,
    ):
        (staging / "model.so").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
    assert caught.value.exit_code == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_inside_a_rename_waits_for_its_end(tmp_path: Path) -> None:
    order = []
    with pytest.raises(Interrupted), removing_staging_on_signals():
        with critical():
            os.kill(os.getpid(), signal.SIGINT)
            order.append("after the signal")
        order.append("not reached")
    assert order == ["after the signal"]
