"""The command line run in-process, as the tests run it."""

from __future__ import annotations

from nlpress.cli import main


def nlpress(*argv: object) -> int:
    """The exit code of `nlpress ARGV...`, argparse's own usage errors (exit 2) included."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)
