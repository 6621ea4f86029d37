"""Start TVM's RPC tracker and servers: on a board, or all on this machine (`LocalBoards`).

A server is `rpc_server.py` beside this file, run by this Python or by the emulated aarch64 one
(`emulation.python_command`); the tracker is TVM's, run in a worker process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from nlpress.targets.remote import Board, RemoteError, message_of

SERVER_SCRIPT = Path(__file__).with_name("rpc_server.py")


def serve_command(
    tracker: str,
    key: str,
    *,
    host: str = "127.0.0.1",
    port: int = 9090,
    threads: int = 0,
    emulate: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a server for `key`: this Python, or emulated aarch64.

    `threads` sizes the server's TVM thread pool (TVM_NUM_THREADS); 0 leaves TVM's default,
    which is half the board's logical CPUs.
    """
    args = ["--tracker", tracker, "--key", key, "--host", host, "--port", str(port)]
    env = {"TVM_NUM_THREADS": str(threads)} if threads else {}
    if emulate:
        from nlpress.targets import emulation

        return emulation.python_command(
            SERVER_SCRIPT, args, env={"TVM_USE_RUNTIME_LIB": "1", **env}
        )
    return [sys.executable, os.fspath(SERVER_SCRIPT), *args], {**os.environ, **env}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class LocalBoards:
    """A tracker and servers on this machine, started together and all stopped on `close`.

    For tests, benchmarks and trying RPC without a board: `add("arm", emulate=True)` starts a
    server under qemu's aarch64 Python. Each process runs in its own process group, so that
    `kill` takes a server's sessions down with it, as a board that loses power would.
    """

    def __init__(self, logs: str | os.PathLike[str], host: str = "127.0.0.1") -> None:
        """Start a tracker on a free port of `host`; each process logs to a file in `logs`."""
        self.host = host
        self.port = free_port(host)
        self.logs = Path(logs)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        command = [sys.executable, "-m", "nlpress.cli", "remote", "tracker"]
        self._tracker = self._start("tracker", [*command, "--host", host, "--port", str(self.port)])
        self._wait(self._listening, 60, "tracker")

    @property
    def address(self) -> str:
        """The tracker as HOST:PORT."""
        return f"{self.host}:{self.port}"

    def board(self, key: str) -> Board:
        """The boards of `key` at this tracker."""
        return Board(self.host, self.port, key)

    def add(
        self, key: str, *, threads: int = 0, emulate: bool = False, timeout: float = 180
    ) -> str:
        """Start a server under `key` and wait until the tracker lists it; returns its name."""
        name = f"{key}-{len([n for n in self.servers if n.startswith(key + '-')])}"
        before = self.board(key).servers()
        cmd, env = serve_command(
            self.address,
            key,
            host=self.host,
            port=free_port(self.host),
            threads=threads,
            emulate=emulate,
        )
        self.servers[name] = self._start(name, cmd, env)
        self._wait(lambda: self.board(key).servers() > before, timeout, name)
        return name

    def sessions(self, name: str) -> int:
        """How many client sessions server `name` has accepted (from its log)."""
        return (self.logs / f"{name}.log").read_text().count("connected from")

    def kill(self, name: str) -> None:
        """Kill server `name` and its sessions at once (SIGKILL to its process group)."""
        process = self.servers[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait(30)

    def close(self) -> None:
        """Stop every server, then the tracker."""
        for name in list(self.servers):
            self.kill(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._tracker.pid, 9)
        self._tracker.wait(30)

    def __enter__(self) -> LocalBoards:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(
        self, name: str, cmd: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "wb") as out:
            return subprocess.Popen(
                list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), 1):
                return True
        except OSError:
            return False

    def _wait(self, ready: Callable[[], bool], timeout: float, name: str) -> None:
        """Wait until `ready()`; one line when process `name` exits or time runs out."""
        process = self._tracker if name == "tracker" else self.servers[name]
        deadline = time.monotonic() + timeout
        while not ready():
            failure = None
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text().strip().splitlines()[-1:]
                failure = f"{name} exited with {process.returncode}: {' '.join(tail)}"
            elif time.monotonic() > deadline:
                failure = f"{name} did not start within {timeout:.0f} s (see {self.logs})"
            if failure:
                self.close()
                raise RemoteError(failure)
            time.sleep(0.5)


@contextlib.contextmanager
def tracker_serving(host: str, port: int) -> Iterator[int]:
    """Run TVM's tracker (in a worker process) on exactly `port`, until the block ends."""
    try:
        from tvm.rpc.tracker import Tracker
    except ImportError as exc:  # tornado missing
        raise RemoteError(f"the RPC tracker cannot start: {message_of(exc)}") from exc
    try:
        tracker = Tracker(host, port, port + 1, silent=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise RemoteError(f"the RPC tracker cannot listen on {host}:{port}: {exc}") from exc
    try:
        yield tracker.port
    finally:
        tracker.terminate()
