"""Tuning over RPC: minilm-l6's x86 kernels measured by one board, then shared by two.

Starts a tracker and x86 servers on 127.0.0.1 (`nlpress.targets.serving.LocalBoards`, one thread
each), and compiles minilm-l6 for x86 at 1x128 with `--tune TRIALS --rpc ... --key x86` twice,
each time from empty records: first with one server under the key, then with two. Reports the
wall time of each compile and the sessions each server served (one per measured candidate, and
one for timing the default schedules that seed the search), then times the tuned artifact on a
board (`bench --rpc`). On a machine with as few cores as servers, both servers share the same
cores: the point is that the measurements are shared, not the speed-up. Writes remote.json into
--out and the "remote" section of benchmarks/RESULTS.md.

    python benchmarks/remote.py [--trials N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import machine

import nlpress
from nlpress.targets import tuning
from nlpress.targets.remote import bench_on_board
from nlpress.targets.serving import LocalBoards

log = logging.getLogger("benchmarks.remote")

MODEL = "minilm-l6"
SHAPES = {name: (1, 128) for name in ("input_ids", "attention_mask", "token_type_ids")}


def tune_with(servers: int, trials: int, out: Path) -> dict[str, Any]:
    """Compile with `--tune trials` measured on `servers` local boards; what each served."""
    with tempfile.TemporaryDirectory(prefix="boards-") as logs, LocalBoards(logs) as boards:
        names = [boards.add("x86", threads=1) for _ in range(servers)]
        records, artifact = out / f"records-{servers}", out / f"tuned-{servers}"
        began = time.perf_counter()
        nlpress.compile(
            MODEL,
            "x86",
            artifact,
            shapes=SHAPES,
            tune=trials,
            tuning_records=records,
            board=boards.board("x86"),
        )
        seconds = time.perf_counter() - began
        sessions = {name: boards.sessions(name) for name in names}
        timed = bench_on_board(artifact, boards.board("x86"), runs=20)
    row = {
        "servers": servers,
        "trials": trials,
        "compile_seconds": round(seconds, 1),
        "sessions_per_server": sessions,
        "records": tuning.record_count(records),
        "board_ms": timed["nlpress_ms"],
        "board_threads": timed["threads"],
        "max_abs_diff_vs_graph": timed["vs_graph"]["worst"],
    }
    log.info("%s", json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/remote"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.glob("*-[12]"):  # records and artifacts of an earlier run
        shutil.rmtree(stale)
    rows = [tune_with(servers, args.trials, args.out) for servers in (1, 2)]
    report = {"cpu": machine.cpu(), "model": MODEL, "shapes": SHAPES, "rows": rows}
    (args.out / "remote.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"{MODEL} compiled for x86 at 1x128 with `--tune {args.trials} --rpc ... --key x86`, "
        "from empty records, on local x86 servers (one thread each) behind a tracker on "
        "127.0.0.1; sessions are the server's log of client sessions (one per measured "
        "candidate, and one that times the seeding default schedules). Then the tuned artifact "
        "timed on a board with `bench --rpc` (median of 20, 0.2 s apart).",
        "",
        "| servers | compile s | sessions per server | records | board ms (threads) | "
        "max abs diff vs model.onnx |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['servers']} | {r['compile_seconds']:.0f} | "
        f"{', '.join(str(n) for n in r['sessions_per_server'].values())} | {r['records']} | "
        f"{r['board_ms']:.2f} ({r['board_threads']}) | {r['max_abs_diff_vs_graph']:.1e} |"
        for r in rows
    ]
    title = "Tuning measured on boards over RPC (benchmarks/remote.py)"
    machine.write_section("remote", title, lines, machine.command(__file__, sys.argv[1:]))
    log.info("wrote %s and %s", args.out / "remote.json", machine.RESULTS)


if __name__ == "__main__":
    main()
