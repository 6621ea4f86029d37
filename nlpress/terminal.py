"""What a person sees on a terminal: the progress of long steps, drawn by rich on stderr.

A step shows a spinner, its label (indented under the step it runs in), units done of the total,
the elapsed time and, when the total is known, the time left. Inner steps leave the screen when
they end, and so do outer steps shorter than `KEEP_SECONDS`: what stays is a short log of where
the time went.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from nlpress.ir.progress import Advance

KEEP_SECONDS = 1.0
REFRESHES_PER_SECOND = 8


class _Units(ProgressColumn):
    """`done/total`, or `done` when the total is unknown, or nothing for a step without units."""

    def render(self, task: Task) -> Text:
        """The units text of one task."""
        if not task.fields["counted"]:
            return Text("")
        if task.total is not None:
            return Text(f"{int(task.completed)}/{int(task.total)}")
        return Text(str(int(task.completed)))


class _TimeLeft(TimeRemainingColumn):
    """The time left, for steps whose total is known."""

    def render(self, task: Task) -> Text:
        """Rich's estimate, or nothing."""
        return super().render(task) if task.fields["counted"] else Text("")


@dataclass
class _Open:
    label: str
    task: TaskID
    began: float


class TerminalProgress:
    """A progress reporter (see `nlpress.ir.progress`) that draws on a terminal stream."""

    def __init__(self, stream: IO[str]) -> None:
        console = Console(file=stream, stderr=True)
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]done"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            _Units(),
            TimeElapsedColumn(),
            _TimeLeft(),
            console=console,
            refresh_per_second=REFRESHES_PER_SECOND,
            redirect_stdout=False,
        )
        self._open: list[_Open] = []
        self._started = False

    def begin(self, label: str, total: int | None) -> Advance:
        """Show a new step under the ones still open."""
        if not self._started:
            self._progress.start()
            self._started = True
        description = "  " * len(self._open) + label
        task = self._progress.add_task(description, total=total, counted=total is not None)
        self._open.append(_Open(label, task, time.perf_counter()))
        self._progress.refresh()

        def advance(units: int) -> None:
            self._progress.advance(task, units)

        return advance

    def end(self, label: str) -> None:
        """Close the step; an outer step that took a while stays on the screen, marked done."""
        index = max(i for i, s in enumerate(self._open) if s.label == label)
        opened = self._open.pop(index)
        if index > 0 or time.perf_counter() - opened.began < KEEP_SECONDS:
            self._progress.remove_task(opened.task)
            return
        task = self._task(opened.task)
        total = task.total if task.total is not None else max(task.completed, 1)
        self._progress.update(opened.task, total=total, completed=total)

    def close(self) -> None:
        """Stop drawing; the steps kept stay on the screen."""
        if self._started:
            self._progress.stop()
            self._started = False

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _task(self, task: TaskID) -> Task:
        return next(t for t in self._progress.tasks if t.id == task)
