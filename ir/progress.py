"""Progress of long steps, told to the reporter the front door installed; silent without one.

Passes and the lowering never print: they wrap their loops in `steps` and their long calls in
`step`, and whoever runs them (the command line, on a terminal) decides what a person sees. The
reporter is ambient, as a logger is, so that a loop deep in a pass needs no parameter to be seen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sized
from contextvars import ContextVar
from typing import Protocol, TypeVar

T = TypeVar("T")
Advance = Callable[[int], None]


class Reporter(Protocol):
    """Receives the steps of a run as they start, advance and end."""

    def begin(self, label: str, total: int | None) -> Advance:
        """Start a step of `total` units (None: unknown); returns the call that advances it."""

    def end(self, label: str) -> None:
        """The step begun last with `label` is over."""


_current: ContextVar[Reporter | None] = ContextVar("nlpress_progress", default=None)


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Send the progress of everything run inside the block to `reporter`."""
    token = _current.set(reporter)
    try:
        yield
    finally:
        _current.reset(token)


@contextlib.contextmanager
def step(label: str, total: int | None = None) -> Iterator[Advance]:
    """Report the block as the step `label` of `total` units; yields the call that advances it."""
    reporter = _current.get()
    if reporter is None:
        yield _ignore
        return
    advance = reporter.begin(label, total)
    try:
        yield advance
    finally:
        reporter.end(label)


def steps(items: Iterable[T], label: str) -> Iterator[T]:
    """Yield `items`, one unit of the step `label` each."""
    total = len(items) if isinstance(items, Sized) else None
    with step(label, total) as advance:
        for item in items:
            yield item
            advance(1)


def _ignore(units: int) -> None:
    """Advance nothing: no reporter is listening."""
