"""Staging beside an output: named with the process id, removed on failure, signal or death.

Every output nlpress writes (an ONNX file, an artifact folder, a zoo export) is built under a
staging path in the output's own folder, `.NAME.PID.XXXXXXXX.tmp`, and renamed into place when
complete, so a failed or interrupted run never leaves a half-written output, and an older
output stays until the new one is whole. A staging path is removed when its block fails; on
SIGINT or SIGTERM (with `removing_staging_on_signals`, which the command line installs); and,
when its process died without removing it (SIGKILL, a power cut), by the next run that stages
into the same folder for the same name.

The live staging paths are the one piece of process-wide state here: a signal may arrive while
the main thread is deep in a native call (a TVM build), and a watcher thread then removes them
itself before the process exits.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType

from nlpress.ir.errors import NlpressError, UsageError

log = logging.getLogger(__name__)

# Signals that stop a run cleanly; their exit status is 128 + the signal's number.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Seconds the main thread gets to unwind after a signal before the watcher removes the staging
# paths and ends the process itself (a native call can hold the main thread for minutes).
GRACE_S = 2.0

# Write errors that are the output's place, not the program: no space, quota, read-only, size.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)

_STAGED = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.(?:tmp|old)$")


class OutputError(NlpressError):
    """An output that cannot be written: its folder is missing, read-only or not a folder."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; raised in the main thread so that staging is removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's status for a process stopped by this signal: 128 + its number."""
        return 128 + self.signum


class _Live:
    """The staging paths of this process, and the lock that renames into place hold."""

    def __init__(self) -> None:
        self.paths: dict[Path, None] = {}
        self.lock = threading.RLock()
        self.signum: int | None = None  # the stop signal received, if any
        self.deferred = 0  # depth of `critical` blocks in the main thread
        self.pending = False  # a signal arrived inside a critical block
        self.done = threading.Event()  # the run ended: the watcher stands down

    def remove_all(self) -> None:
        with self.lock:
            for path in list(self.paths):
                _remove(path)
            self.paths.clear()


_LIVE = _Live()


def staging_dir(target: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """A fresh staging folder beside `target`, removed when the block ends (rename it first)."""
    return _staged(Path(target), folder=True)


def staging_file(target: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """A staging file path beside `target`, renamed onto `target` if the block succeeds."""
    return _staged(Path(target), folder=False)


@contextlib.contextmanager
def _staged(target: Path, *, folder: bool) -> Iterator[Path]:
    parent = writable_parent(target)
    remove_stale(target)
    prefix, suffix = f".{target.name}.{os.getpid()}.", ".tmp"
    try:
        if folder:
            path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
            os.close(fd)
            path = Path(name)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write there ({exc.strerror or exc})") from exc
    with _LIVE.lock:
        _LIVE.paths[path] = None
    try:
        yield path
        if not folder:
            path.chmod(0o666 & ~umask())
            rename_into_place(path, target)
    except OSError as exc:
        if exc.errno not in _NO_ROOM:
            raise
        raise OutputError(f"{target}: cannot write there ({exc.strerror or exc})") from exc
    finally:
        with _LIVE.lock:
            _LIVE.paths.pop(path, None)
            _remove(path)


def writable_parent(target: str | os.PathLike[str]) -> Path:
    """The folder of `target`, created if missing; an OutputError names `target` if it cannot be."""
    target = Path(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write there ({exc.strerror or exc})") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{target}: cannot write there (folder {parent} is not writable)")
    return parent


def check_writable(target: str | os.PathLike[str], *, folder: bool = False) -> None:
    """Fail early, creating nothing, if `target` could not be written when the run ends.

    A file output may not be an existing folder. The nearest folder that exists above `target`
    must be one where a file can be made (tried with a staging file, removed at once:
    permissions alone do not tell for root, or on /proc).

    Raises:
        OutputError: Naming `target` and what stops it.

    """
    target = Path(target)
    if not folder and target.is_dir():
        raise OutputError(f"{target}: is a folder; give the output file's name")
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{target}: cannot write there ({ancestor} is not a folder)")
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=ancestor
        )
    except OSError as exc:
        raise OutputError(f"{target}: cannot write there ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(name)


def rename_into_place(staged: Path, target: Path) -> None:
    """Rename a staged file onto `target`, not to be cut short by a signal."""
    with critical():
        try:
            os.replace(staged, target)
        except OSError as exc:
            raise OutputError(f"{target}: cannot write there ({exc.strerror or exc})") from exc


def replace_dir(staged: Path, target: Path) -> None:
    """Rename a staged folder to `target`, moving an older one aside first and then removing it.

    The renames run as one step that a signal does not cut short, so `target` is at every
    moment either the old folder or the new one.
    """
    with critical():
        old = None
        if target.exists():
            old = Path(
                tempfile.mkdtemp(
                    prefix=f".{target.name}.{os.getpid()}.", suffix=".old", dir=target.parent
                )
            )
            _LIVE.paths[old] = None
            os.replace(target, old / target.name)
        os.replace(staged, target)
    if old is not None:
        _remove(old)
        with _LIVE.lock:
            _LIVE.paths.pop(old, None)


def remove_stale(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the staging paths for `target` left by processes that no longer run.

    Returns:
        The paths removed.

    """
    target = Path(target)
    removed = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _STAGED.match(entry.name)
        if not match or match.group("name") != target.name:
            continue
        pid = int(match.group("pid"))
        if pid == os.getpid() and entry.name in {p.name for p in _LIVE.paths}:
            continue
        if pid != os.getpid() and _running(pid):
            continue
        log.info("removing %s, left by process %d", entry, pid)
        _remove(entry)
        removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def refuse_overwrite(
    output: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str] | None],
    *,
    folder: bool = False,
    flag: str = "-o",
) -> None:
    """Fail if writing `output` would replace one of `inputs` (links followed).

    A file output may not be an input file. A folder output (an artifact, which replaces the
    whole folder) may not be an input, nor hold one, nor hold a folder the run writes.

    Raises:
        UsageError: Naming the flag, the output and the input.

    """
    out = Path(output)
    for given in inputs:
        if given is None:
            continue
        source = Path(given)
        same = out.exists() and source.exists() and os.path.samefile(out, source)
        inside = folder and not same and _is_within(source, out)
        if same or inside:
            how = "is" if same else "holds"
            raise UsageError(
                f"{flag} {out} {how} the input {source}; inputs are never overwritten: "
                "give another output"
            )


def _is_within(path: Path, folder: Path) -> bool:
    real, base = path.resolve(), folder.resolve()
    return real == base or base in real.parents


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A block that SIGINT and SIGTERM do not cut short: a signal in it is raised at its end."""
    with _LIVE.lock:
        _LIVE.deferred += 1
        try:
            yield
        finally:
            _LIVE.deferred -= 1
    if _LIVE.deferred == 0 and _LIVE.pending and _LIVE.signum is not None:
        _LIVE.pending = False
        raise Interrupted(_LIVE.signum)


@contextlib.contextmanager
def removing_staging_on_signals(grace: float = GRACE_S) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `Interrupted` in the main thread, staging removed.

    When the main thread does not unwind within `grace` seconds (a native call holds it, or
    swallows the exception), a watcher thread removes the staging paths, says so on stderr and
    ends the process with status 128 + the signal's number. Outside the main thread this does
    nothing.
    """
    if not _in_main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    _LIVE.signum, _LIVE.pending, _LIVE.done = None, False, threading.Event()
    stderr = os.dup(2)
    watcher = threading.Thread(
        target=_watch, args=(read_fd, grace, _LIVE.done, stderr), daemon=True
    )
    for s in STOP_SIGNALS:
        signal.signal(s, _on_signal)
    watcher.start()
    try:
        yield
    finally:
        _LIVE.done.set()
        _LIVE.remove_all()  # what an interrupted block could not remove
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(old_wakeup)
        os.close(write_fd)  # the watcher reads end-of-file and stops
        watcher.join(timeout=1.0)
        os.close(read_fd)
        os.close(stderr)


def received_signal() -> int | None:
    """The stop signal this run received, if any."""
    return _LIVE.signum


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _LIVE.signum is not None:
        return  # the first signal is being handled; the watcher ends the run if it stalls
    _LIVE.signum = signum
    if _LIVE.deferred:
        _LIVE.pending = True
        return
    raise Interrupted(signum)


def _watch(read_fd: int, grace: float, done: threading.Event, stderr: int) -> None:
    stops = {int(s) for s in STOP_SIGNALS}
    received = None
    while received is None:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        received = next((byte for byte in data if byte in stops), None)
    if done.wait(grace):
        return
    with _LIVE.lock:  # waits for a rename into place to finish
        if done.is_set():
            return
        signum = _LIVE.signum or received
        _LIVE.remove_all()
        with contextlib.suppress(OSError):  # the terminal's stderr, even while fd 2 is captured
            os.write(stderr, f"nlpress: interrupted by {signal.Signals(signum).name}\n".encode())
        os._exit(128 + signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
