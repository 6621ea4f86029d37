"""What every benchmark records beside its numbers: the CPU, the commit, and RESULTS.md.

`benchmarks/RESULTS.md` holds one section per benchmark script, each written by its script
(`write_section`) with the date, the commit and the CPU it ran on; a re-run replaces its own
section and leaves the others as they are.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("RESULTS.md")
# The /proc/cpuinfo flags that decide which kernels run.
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu() -> dict[str, Any]:
    """The CPU model, its ISA flags that matter here, and the CPUs this process may use."""
    model, flags = platform.processor(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        text = cpuinfo.read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = found.group(1).strip() if found else model
        line = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
        flags = set(line.group(1).split()) if line else set()
    return {
        "model": model or platform.machine(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def describe_cpu(info: dict[str, Any]) -> str:
    """One line naming the CPU: model, ISA flags, usable CPUs."""
    return f"{info['model']} ({', '.join(info['isa']) or 'no AVX'}; {info['cpus']} CPUs)"


def commit() -> str:
    """The short commit of the checkout, "+changes" when it has changes besides RESULTS.md."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        dirty = [line for line in status if not line.endswith(RESULTS.name)]
    except OSError:
        return "unknown"
    return f"{head}+changes" if dirty else head or "unknown"


PATH_FLAGS = ("--out", "--results", "--work")  # folders of the measuring machine


def command(script: str, argv: list[str]) -> str:
    """The command that ran `script`, less the flags naming the measuring machine's folders."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg in PATH_FLAGS:
            skip = not skip
            continue
        if not arg.startswith(tuple(f"{flag}=" for flag in PATH_FLAGS)):
            kept.append(arg)
    return " ".join(["python", f"benchmarks/{Path(script).name}", *kept])


def clean_environment() -> dict[str, str]:
    """This process's environment without the thread settings a user would not set."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TVM_", "OMP_"))}


def in_fresh_process(script: str, spec: dict[str, Any]) -> dict[str, Any]:
    """`python SCRIPT --measure SPEC` in a new process without the thread settings in its
    environment (`clean_environment`): the JSON its last line of output holds."""
    command = [sys.executable, script, "--measure", json.dumps(spec)]
    done = subprocess.run(
        command, env=clean_environment(), capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"the measuring process failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def publish(script: str, section: str, title: str, report: Any, out: Path, body: list[str]) -> None:
    """`report` as SCRIPT.json in `out`, and `body` as RESULTS.md section `section`, with the
    command that ran `script` (this process's arguments)."""
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / f"{Path(script).stem}.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    name = f"benchmarks/{Path(script).name}"
    write_section(section, f"{title} ({name})", body, command(script, sys.argv[1:]).strip())
    log = logging.getLogger(f"benchmarks.{Path(script).stem}")
    log.info("wrote %s and %s", report_path, RESULTS)


def write_section(name: str, title: str, body: list[str], command: str) -> None:
    """Replace (or add) benchmark `name`'s section of RESULTS.md."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = cpu()
    section = [
        f"<!-- {name} -->",
        f"## {title}",
        "",
        f"`{command}` on {stamp}, commit {commit()}, {describe_cpu(info)}, "
        f"load average {', '.join(map(str, info['load_average']))}.",
        "",
        *body,
        f"<!-- /{name} -->",
    ]
    text = RESULTS.read_text() if RESULTS.exists() else _HEADER
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    joined = "\n".join(section)
    text = (
        pattern.sub(lambda _: joined, text) if pattern.search(text) else text + "\n" + joined + "\n"
    )
    RESULTS.write_text(text)


_HEADER = """# Benchmark results

Written by the scripts in this folder, one section each; a re-run replaces its section. Each
names the command, date, commit and CPU it ran on: numbers from different machines differ.
"""
