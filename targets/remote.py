"""Boards behind TVM's RPC tracker: run, time and tune artifacts where they will be deployed.

TVM's own engine does the work. A tracker (`nlpress remote tracker`, or
`python -m tvm.exec.rpc_tracker`) hands each request for a key to a free server registered under
it; a server on a board (`nlpress remote serve`, or `rpc_server.py` beside this file, which needs
only numpy and the TVM runtime) forks one process per session, receives files and runs what it
is sent (`serving.py` starts both). nlpress is the client:

- `RemoteSession`: an artifact uploaded to a board of the key and loaded there, with ONNX
  Runtime's `run`, and `time` measured on the board by TVM's time evaluator.
- `tuning_runner`: MetaSchedule's `RPCRunner` with one worker per server of the key, so that
  candidates are measured on every board at once (`tuning.tune`).

A board that fails mid-run (disconnects, crashes) is replaced by another server of the key once;
if that fails too, one line says what failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import statistics
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from nlpress.ir import UsageError
from nlpress.targets.runtime import LIBRARY, Session, check_feeds, dim_limits

log = logging.getLogger(__name__)

# Seconds a session may last before its server ends it (an upload of a large library included).
SESSION_TIMEOUT = 600
# Seconds to wait for a tracker to answer a first connection.
CONNECT_TIMEOUT = 5.0

T = TypeVar("T")


class RemoteError(UsageError):
    """No tracker at the address, no board of the key, or a board that failed; one line."""


@dataclass(frozen=True)
class Board:
    """Where remote work goes: a tracker's address and the key its boards registered under."""

    host: str
    port: int
    key: str

    @classmethod
    def parse(cls, tracker: str, key: str | None) -> Board:
        """A board from `--rpc HOST:PORT` and `--key KEY`."""
        host, _, port = tracker.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RemoteError(f"--rpc {tracker!r}: expected the tracker as HOST:PORT")
        if not key:
            raise RemoteError("--rpc needs --key KEY: the kind of board to run on")
        return cls(host, int(port), key)

    def __str__(self) -> str:
        return f"key {self.key} at {self.host}:{self.port}"

    def summary(self) -> dict[str, Any]:
        """The tracker's summary: its servers ("server_info") and queues ("queue_info")."""
        from tvm import rpc

        self._reachable()
        try:
            tracker = rpc.connect_tracker(self.host, self.port)
            try:
                return dict(tracker.summary())
            finally:
                tracker.close()
        except (OSError, RuntimeError) as exc:
            raise RemoteError(f"the RPC tracker at {self.host}:{self.port}: {exc}") from exc

    def servers(self) -> int:
        """How many servers are registered under this key now."""
        infos = self.summary().get("server_info", [])
        return sum(1 for info in infos if info.get("key") == f"server:{self.key}")

    def request(self, timeout: float = SESSION_TIMEOUT) -> Any:
        """An RPC session with a free server of the key; waits while all of them are busy.

        Raises:
            RemoteError: No tracker at the address, or no server registered under the key.

        """
        from tvm import rpc

        summary = self.summary()
        keys = sorted({i["key"].split(":", 1)[-1] for i in summary.get("server_info", [])})
        if self.key not in keys:
            there = ", ".join(keys) or "none"
            raise RemoteError(
                f"no server registered under key {self.key!r} at {self.host}:{self.port} "
                f"(keys there: {there}); start one with: nlpress remote serve --tracker "
                f"{self.host}:{self.port} --key {self.key}"
            )
        try:
            tracker = rpc.connect_tracker(self.host, self.port)
            return tracker.request(self.key, priority=1, session_timeout=timeout, max_retry=2)
        except (OSError, RuntimeError) as exc:
            raise RemoteError(f"{self}: no session: {message_of(exc)}") from exc

    def threads(self) -> int:
        """The threads of a server's TVM thread pool (its parallel kernels' width)."""
        return int(self.request(60).get_function("runtime.NumThreads")())

    def _reachable(self) -> None:
        """Fail in seconds where TVM's client would retry for a minute."""
        try:
            with socket.create_connection((self.host, self.port), CONNECT_TIMEOUT):
                pass
        except OSError as exc:
            raise RemoteError(
                f"no RPC tracker at {self.host}:{self.port} ({exc.strerror or exc}); start one "
                "with: nlpress remote tracker"
            ) from exc


class RemoteSession(Session):
    """An artifact loaded on a board: ONNX Runtime's `run`, and `time` measured on the board.

    The library is uploaded once per board session; inputs and outputs travel over the
    connection. Feeds are checked here, against the manifest, before anything is sent. The
    board's TVM thread pool runs the parallel kernels (nlpress's own launcher is for local
    sessions).
    """

    def __init__(
        self, path: str | os.PathLike[str], board: Board, *, timeout: float = SESSION_TIMEOUT
    ) -> None:
        """Upload the artifact folder `path`'s library to a board and load it there."""
        self._read(path, None)
        if self._device_kind != "cpu":
            raise RemoteError(
                f"{self.path}: a {self._device_kind} artifact; remote runs take CPU artifacts"
            )
        self.board = board
        self.timeout = timeout
        self.launcher = "tvm"
        self._connect()

    def _connect(self) -> None:
        """A fresh session on a free server of the key, with the library loaded."""
        from tvm.runtime.vm import VirtualMachine

        self._remote = self.board.request(self.timeout)
        self._remote.upload(os.fspath(self.path / LIBRARY), LIBRARY)
        try:
            module = self._remote.load_module(LIBRARY)
        except Exception as exc:  # TVM raises the board's error as its own types
            arch = (self.manifest.get("code") or {}).get("arch", "?")
            raise RemoteError(
                f"{self.board}: the board cannot load {self.path / LIBRARY} (built for {arch}): "
                f"{message_of(exc)}"
            ) from exc
        self._device = self._remote.cpu()
        self._vm = VirtualMachine(module, self._device)
        self.threads = int(self._remote.get_function("runtime.NumThreads")())

    def kernel_times(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Not on a board: TVM's per-kernel clock runs in the process that calls the kernels."""
        raise RemoteError("kernel times are measured by a local session (nlpress.load)")

    def close(self) -> None:
        """End the board session: the server is free for the next request.

        TVM ends a session when the last object that refers to it (the session, the device,
        the loaded modules) is gone.
        """
        self._vm = self._remote = self._device = None

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _invoke(self, arrays: Sequence[np.ndarray], wanted: Sequence[int]) -> list[np.ndarray]:
        def call() -> list[np.ndarray]:
            import tvm

            args = [tvm.runtime.tensor(a, self._device) for a in arrays]
            values = self._flatten(self._vm["main"](*args))
            return [values[i].numpy() for i in wanted]

        return self._on_board(call)

    def _flatten(self, result: Any) -> list[Any]:
        """The tensors of a result; a tuple stays on the board, read item by item there."""
        if hasattr(result, "numpy"):
            return [result]
        size = self._remote.get_function("ffi.ArraySize")
        item = self._remote.get_function("ffi.ArrayGetItem")
        return [t for i in range(int(size(result))) for t in self._flatten(item(result, i))]

    def time(self, feeds: Mapping[str, Any], runs: int = 20, settle: float = 0.2) -> list[float]:
        """Seconds of `runs` calls timed on the board, `settle` s apart, after an untimed one."""
        arrays = check_feeds(self._inputs, feeds, self._index_ranges, dim_limits(self.manifest))

        def timed() -> list[float]:
            import tvm

            evaluator = self._vm.time_evaluator(
                "main", self._device, number=1, repeat=runs, cooldown_interval_ms=int(settle * 1e3)
            )
            args = [tvm.runtime.tensor(a, self._device) for a in arrays]
            return [float(s) for s in evaluator(*args).results]

        with self._lock:
            return self._on_board(timed)

    def _on_board(self, work: Callable[[], T]) -> T:
        """`work` on the board; once more on a fresh session when the board fails."""
        try:
            return work()
        except Exception as exc:  # a lost connection surfaces as TVM's error types
            log.warning("%s: the board failed (%s); trying another server", self.board, exc)
            first = message_of(exc)
        try:
            self._connect()
            return work()
        except Exception as exc:
            raise RemoteError(
                f"{self.board}: the board failed running {self.path.name} ({first}), and so did "
                f"the next server: {message_of(exc)}"
            ) from exc


def bench_on_board(
    artifact: str | os.PathLike[str],
    board: Board,
    shapes: Mapping[str, Sequence[int | str]] | None = None,
    runs: int = 20,
    settle: float = 0.2,
) -> dict[str, Any]:
    """Time an artifact on a board and compare its outputs with its model.onnx here.

    Returns:
        JSON-ready facts: "board", "servers" under the key, the board's "threads", "shapes",
        "nlpress_ms" (median of `runs` timed on the board) with "min_ms" and "max_ms", and
        "vs_graph" (the board's outputs against model.onnx run as written in ONNX Runtime).

    """
    from nlpress.targets.bench import agreement, bench_feeds

    with RemoteSession(artifact, board) as session:
        feeds = bench_feeds(session, shapes or {})
        seconds = session.time(feeds, runs, settle)
        names = [o.name for o in session.get_outputs()]
        outputs = session.run(None, feeds)
        threads = session.threads
    ms = [s * 1e3 for s in seconds]
    return {
        "board": str(board),
        "key": board.key,
        "servers": board.servers(),
        "threads": threads,
        "runs": runs,
        "settle_s": settle,
        "shapes": {name: list(array.shape) for name, array in feeds.items()},
        "nlpress_ms": round(statistics.median(ms), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
        "vs_graph": agreement(names, outputs, Path(artifact) / "model.onnx", feeds),
    }


def tuning_runner(board: Board, timeout: float) -> Any:
    """MetaSchedule's RPCRunner with one worker per server registered under the key now."""
    from tvm.s_tir import meta_schedule as ms

    servers = board.servers()
    if not servers:
        board.request()  # raises the one-line error that names the keys there
    config = ms.runner.RPCConfig(
        tracker_host=board.host,
        tracker_port=board.port,
        tracker_key=board.key,
        session_priority=1,
        session_timeout_sec=int(timeout),
    )
    return ms.runner.RPCRunner(config, max_workers=servers)


@contextlib.contextmanager
def kernel_timer(
    board: Board, tvm_target: Any, cross_compiler: str | None, repeat: int = 9
) -> Iterator[Callable[[Any], float]]:
    """Seconds per call of a scheduled PrimFunc, compiled here and timed on a board (median).

    One board session serves every kernel timed in the block, and is ended with it, so that the
    board is free for the search's measurements.
    """
    import tvm

    from nlpress.targets.bench import random_args
    from nlpress.targets.stack_tiles import pipeline_for

    held = {"session": board.request()}
    count = [0]

    def timed(func: Any) -> float:
        session = held["session"]
        count[0] += 1
        name = f"kernel{count[0]}.so"
        library = tvm.compile(
            tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
            tvm_target,
            tir_pipeline=pipeline_for(tvm_target),
        )
        try:
            with tempfile.TemporaryDirectory(prefix="nlpress-kernel-") as folder:
                session.upload(export_library(cross_compiler, library, folder), name)
            module = session.load_module(name)
            device = session.cpu()
            evaluator = module.time_evaluator("main", device, number=1, repeat=repeat)
            return float(statistics.median(evaluator(*random_args(func, device)).results))
        except Exception as exc:  # TVM raises a board's failures as its own error types
            raise RemoteError(f"{board}: timing a kernel failed: {message_of(exc)}") from exc

    try:
        yield timed
    finally:
        held.clear()


def export_library(cross_compiler: str | None, mod: Any, folder: str | None = None) -> str:
    """A built module as a shared library linked here by the target's compiler; returns its path.

    MetaSchedule's export for boards (in a fresh temporary folder when none is given): its
    default is a tar of object files, which a board must link itself, and boards (the emulated
    root too) have no C compiler.
    """
    from tvm.support import cc

    path = os.path.join(folder or tempfile.mkdtemp(prefix="nlpress-candidate-"), "candidate.so")
    fcompile = cc.cross_compiler(cross_compiler) if cross_compiler else cc.create_shared
    mod.export_library(path, fcompile=fcompile)
    return path


def message_of(exc: BaseException) -> str:
    """The last line of an error: TVM puts its message after the board's traceback."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
