"""A TVM RPC server that registers with a tracker, run in this process: a board's side of RPC.

Usage: python rpc_server.py --tracker HOST:PORT --key KEY [--host HOST] [--port PORT]

Needs only numpy and the TVM runtime, so a board (or an aarch64 Python under emulation) runs it by
file path. It serves as `python -m tvm.exec.rpc_server` does, with TVM's own listen loop (a
forked process per client session, files in a fresh folder), but without TVM's extra launcher
process: that one starts `sys.executable` again, which an emulated Python cannot. Each session
is logged ("connected from ..."); SIGTERM and SIGINT end the sessions and the server.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import sys
from types import FrameType


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def main(argv: list[str]) -> int:
    """Serve until stopped; returns the exit code."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tracker", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--key", required=True, help="the kind of board, e.g. arm or x86")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=9090, help="first port to try")
    parser.add_argument("--port-end", type=int, help="port after the last to try (PORT + 100)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from tvm.rpc.server import PopenRPCServerState

    def stop(signum: int, frame: FrameType | None) -> None:
        for session in multiprocessing.active_children():
            session.terminate()
        os._exit(0)  # TVM's listen loop is not a daemon thread: end the process here

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    state = PopenRPCServerState(
        args.host,
        args.port,
        args.port_end or args.port + 100,
        tracker_addr=args.tracker,
        key=args.key,
    )
    print(f"serving key {args.key} on {args.host}:{state.port}", flush=True)
    while state.thread.is_alive():
        state.thread.join(1.0)
    return 1  # the listen loop ended on an error (logged above)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
