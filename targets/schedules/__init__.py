"""nlpress's default CPU schedules: one small rule per kernel family, applied without tuning.

Rules are tried in order on every PrimFunc that has no schedule yet (from tuning records); the
first that applies wins. A kernel no rule takes keeps TVM's plain loop nest and is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from nlpress.targets.schedules import loops
from nlpress.targets.schedules.elementwise import Elementwise
from nlpress.targets.schedules.int8 import Int8Matmul
from nlpress.targets.schedules.matmul import Matmul
from nlpress.targets.schedules.panels import PanelMatmul
from nlpress.targets.schedules.reduction import RowReduction

log = logging.getLogger(__name__)

SCHEDULED = "tirx.is_scheduled"


class Rule(Protocol):
    """A schedule rule: returns a Schedule for a PrimFunc it applies to, else None."""

    def apply(self, func: Any, target: Any, tunable: bool) -> Any:
        """The schedule of `func` for `target`, or None."""


def default_rules() -> tuple[Rule, ...]:
    """The CPU rules, most specific first."""
    return (Int8Matmul(), PanelMatmul(), Matmul(), RowReduction(), Elementwise())


def schedule_module(
    mod: Any, target: Any, rules: Sequence[Rule] | None = None
) -> tuple[Any, list[str]]:
    """Apply the rules to every unscheduled PrimFunc of `mod`.

    Args:
        mod: A Relax IRModule after legalization and fusion.
        target: The tvm.target.Target the kernels are built for.
        rules: The rules to try, in order; default `default_rules()`.

    Returns:
        The module with scheduled kernels, and the names of the kernels no rule took.

    """
    from tvm import tirx

    rules = default_rules() if rules is None else rules
    updates, unscheduled = {}, []
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        sch = schedule_func(func, target, rules, name=gvar.name_hint)
        if sch is None:
            unscheduled.append(gvar.name_hint)
        else:
            updates[gvar] = loops.vector_tails(sch.mod["main"]).with_attr(SCHEDULED, True)
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod, sorted(unscheduled)


def is_scheduled(func: Any) -> bool:
    """Whether a PrimFunc carries a schedule (from the rules or from tuning records)."""
    return func.attrs is not None and SCHEDULED in func.attrs and bool(func.attrs[SCHEDULED])


def schedule_func(
    func: Any, target: Any, rules: Sequence[Rule] | None = None, *, name: str = "main"
) -> Any:
    """The Schedule (with its trace) from the first rule that applies to `func`, or None."""
    for rule in default_rules() if rules is None else rules:
        try:
            sch = rule.apply(func, target, False)
        except Exception as exc:
            log.debug("%s: %s failed: %s", name, type(rule).__name__, str(exc).splitlines()[-1:])
            continue
        if sch is not None:
            log.debug("%s: scheduled by %s", name, type(rule).__name__)
            return sch
    return None


__all__ = [
    "Elementwise",
    "Int8Matmul",
    "Matmul",
    "PanelMatmul",
    "RowReduction",
    "Rule",
    "default_rules",
    "is_scheduled",
    "schedule_func",
    "schedule_module",
]
