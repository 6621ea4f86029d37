"""The command line as the tests run it: in-process, or in a fresh process on a terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from nlpress.cli import main


def nlpress(*argv: object) -> int:
    """The exit code of `nlpress ARGV...`, argparse's own usage errors (exit 2) included."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


def nlpress_argv(*argv: object) -> list[str]:
    """The command that runs `nlpress ARGV...` in a fresh Python process."""
    return [sys.executable, "-m", "nlpress.cli", *(str(a) for a in argv)]


def on_a_terminal(command: list[str]) -> list[tuple[float, str]]:
    """Run `command` with a pseudo-terminal as its stdout and stderr; (seconds, text) chunks.

    The command must succeed; its output is the assertion's message otherwise.
    """
    main_fd, child = pty.openpty()
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=child, stderr=child, stdin=child)
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main_fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(main_fd, 65536)
            except OSError:  # the child closed the terminal
                data = b""
            if not data:
                break
            chunks.append((time.perf_counter() - began, data.decode(errors="replace")))
        elif process.poll() is not None:
            break
    process.wait(timeout=60)
    os.close(main_fd)
    assert process.returncode == 0, "".join(text for _, text in chunks)
    return chunks
