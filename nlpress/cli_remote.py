"""`nlpress remote`: the RPC tracker, a board's server, and what a tracker holds.

    nlpress remote tracker [--host 0.0.0.0] [--port 9190]
    nlpress remote serve --tracker HOST:PORT --key KEY [--emulate aarch64]
    nlpress remote list --tracker HOST:PORT

`--rpc HOST:PORT --key KEY` on `bench` and `compile --tune` sends work to those boards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from nlpress.targets import remote, serving

EXIT_OK = 0


def add_commands(sub: Any) -> list[argparse.ArgumentParser]:
    """Add `remote` and its commands to the subparsers `sub`; returns the commands' parsers."""
    p = sub.add_parser("remote", help="boards behind an RPC tracker: tracker, serve, list")
    commands = p.add_subparsers(dest="remote_command", required=True, metavar="COMMAND")
    q = commands.add_parser("tracker", help="run TVM's RPC tracker until stopped")
    q.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    q.add_argument("--port", type=int, default=9190, help="port to listen on (default 9190)")
    q.set_defaults(handler=_tracker)
    parsers = [q]
    q = commands.add_parser("serve", help="serve this machine as a board under a key")
    q.add_argument("--tracker", required=True, metavar="HOST:PORT")
    q.add_argument("--key", required=True, help="the kind of board, e.g. arm or x86")
    q.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    q.add_argument("--port", type=int, default=9090, help="first port to try (default 9090)")
    q.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads of the board's parallel kernels (default: TVM's, half the CPUs)",
    )
    q.add_argument(
        "--emulate",
        choices=["aarch64"],
        help="serve an emulated aarch64 board (qemu-user) from this machine",
    )
    q.set_defaults(handler=_serve)
    parsers.append(q)
    q = commands.add_parser("list", help="the servers and queues of a tracker")
    q.add_argument("--tracker", required=True, metavar="HOST:PORT")
    q.set_defaults(handler=_list)
    parsers.append(q)
    return parsers


def add_board_flags(p: argparse.ArgumentParser, what: str) -> None:
    """`--rpc HOST:PORT --key KEY` for a command that measures (`what` says where)."""
    p.add_argument("--rpc", metavar="HOST:PORT", help=f"{what} on a board of --key at this tracker")
    p.add_argument("--key", help="the kind of board at the --rpc tracker, e.g. arm")


def board(args: argparse.Namespace) -> remote.Board | None:
    """The board that `--rpc` and `--key` name, or None without `--rpc`."""
    if args.rpc is None:
        if args.key is not None:
            raise remote.RemoteError("--key names boards at a tracker: give --rpc HOST:PORT too")
        return None
    return remote.Board.parse(args.rpc, args.key)


def _tracker(args: argparse.Namespace) -> int:
    with serving.tracker_serving(args.host, args.port) as port:
        print(f"RPC tracker on {args.host}:{port}; stop it with Ctrl-C", flush=True)
        while True:
            time.sleep(3600)


def _serve(args: argparse.Namespace) -> int:
    remote.Board.parse(args.tracker, args.key)  # one line for a malformed address
    cmd, env = serving.serve_command(
        args.tracker,
        args.key,
        host=args.host,
        port=args.port,
        threads=args.threads,
        emulate=args.emulate is not None,
    )
    if args.emulate is None:
        os.execve(cmd[0], cmd, env)  # the server in this process, signals and all
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


def _list(args: argparse.Namespace) -> int:
    summary = remote.Board.parse(args.tracker, "any").summary()
    servers = sorted(summary.get("server_info", []), key=lambda s: (s["key"], s["addr"]))
    print(f"tracker {args.tracker}: {len(servers)} servers")
    for server in servers:
        host, port = server["addr"]
        print(f"  {server['key'].split(':', 1)[-1]:<12} {host}:{port}")
    for key, queue in sorted(summary.get("queue_info", {}).items()):
        print(f"  queue {key}: {queue['free']} free, {queue['pending']} waiting")
    sys.stdout.flush()
    return EXIT_OK
