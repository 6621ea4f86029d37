"""Progress reporting: silent without a reporter, ordered and nested with one, closed on errors."""

from __future__ import annotations

import pytest

from nlpress.ir.progress import Advance, reporting, step, steps


class Recorder:
    """A reporter that writes down what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int | None]] = []

    def begin(self, label: str, total: int | None) -> Advance:
        self.events.append(("begin", label, total))
        return lambda units: self.events.append(("advance", label, units))

    def end(self, label: str) -> None:
        self.events.append(("end", label, None))


def test_without_a_reporter_items_pass_through_untouched() -> None:
    assert list(steps(iter([3, 1, 2]), "work")) == [3, 1, 2]
    with step("phase") as advance:
        advance(5)


def test_steps_report_their_total_each_unit_and_their_end() -> None:
    recorder = Recorder()
    with reporting(recorder):
        assert list(steps([10, 20], "batches")) == [10, 20]
    assert recorder.events == [
        ("begin", "batches", 2),
        ("advance", "batches", 1),
        ("advance", "batches", 1),
        ("end", "batches", None),
    ]


def test_inner_steps_end_before_the_outer_one_and_the_reporter_is_scoped() -> None:
    recorder = Recorder()
    with reporting(recorder), step("pass"):
        for _ in steps(range(1), "inner"):
            pass
    assert [e[:2] for e in recorder.events] == [
        ("begin", "pass"),
        ("begin", "inner"),
        ("advance", "inner"),
        ("end", "inner"),
        ("end", "pass"),
    ]
    list(steps([1], "after the block"))
    assert len(recorder.events) == 5


def test_a_step_that_fails_or_is_left_early_still_ends() -> None:
    recorder = Recorder()
    with reporting(recorder):
        with pytest.raises(RuntimeError), step("fails"):
            raise RuntimeError("boom")
        for _ in steps([1, 2, 3], "left early"):
            break
    ends = [label for kind, label, _ in recorder.events if kind == "end"]
    assert ends == ["fails", "left early"]
