"""The options every lossy pass spells alike: `include`, `exclude` and `budget-cosine`, once.

`include`: regexes searched in a layer's node and weight names; only matching layers are
compressed (default: all). The planner writes its per-layer choices this way.

`exclude`: layers left as they are. A pattern excludes a layer when it is the layer's op type
(e.g. `Gemm`) or a regex found (`re.search`) in the layer's node name or weight name. A pattern
written as a glob, with a `*` or `?` after a plain character (`*layer.0*`, `dow*`), keeps the
glob meaning it had in prune-sparsify (matched against whole names), with a deprecation warning.

`budget-cosine`: a least mean cosine, in (0, 1], between the compressed model's embedding output
(`ir/embedding.py`) and the input model's on the calibration data, mean-pooled over real tokens
(`calibration.pooled_cosine`). The pass compresses less where it hurts most until the budget is
met, and reports `budget_cosine` and `budget_met` in its stats (`compile` and `opt` then stop
with BudgetNotMet).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import field
from typing import Any

import onnx_graphsurgeon as gs

log = logging.getLogger(__name__)

EXCLUDE_HELP = (
    "Layers left as they are: op types (e.g. Gemm), or regexes searched in node and weight names."
)
INCLUDE_HELP = (
    "Regexes on node and weight names; only matching layers are compressed (default: all)."
)
BUDGET_HELP = (
    "A least pooled cosine, in (0, 1], between the embedding output and the input model's on "
    "calibration data; the pass compresses less until it is met."
)
# A `*` or `?` after a plain character (not `.`, `)`, `]` or an escape) marks a glob.
_GLOB = re.compile(r"(^|[^.)\]\\])[*?]")


def exclude_option() -> Any:
    """The `exclude` option field: patterns of layers left as they are (default none)."""
    return field(default_factory=tuple, metadata={"help": EXCLUDE_HELP})


def include_option() -> Any:
    """The `include` option field: patterns of the only layers compressed (default all)."""
    return field(default_factory=tuple, metadata={"help": INCLUDE_HELP})


def budget_cosine_option() -> Any:
    """The `budget-cosine` option field: the least pooled output cosine (default none: off)."""
    return field(default=None, metadata={"help": BUDGET_HELP})


def is_glob(pattern: str) -> bool:
    """Whether `pattern` is written as a glob (the deprecated spelling)."""
    return bool(_GLOB.search(pattern))


def check_exclude(pass_name: str, patterns: Sequence[str]) -> None:
    """Raise ValueError for a pattern that is no regex; warn about globs."""
    for pattern in patterns:
        if is_glob(pattern):
            log.warning(
                "%s{exclude=%s}: globs are deprecated; exclude takes regexes searched in node "
                "and weight names (e.g. %s)",
                pass_name,
                pattern,
                pattern.strip("*").replace(".", r"\.") or ".",
            )
            continue
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(
                f"exclude {pattern!r} is not a valid regex ({exc}); escape it to match "
                "a name literally"
            ) from exc


def check_include(patterns: Sequence[str]) -> None:
    """Raise ValueError for an `include` pattern that is no regex."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"include {pattern!r}: bad regex ({exc})") from exc


def included(patterns: Sequence[str], names: Iterable[str]) -> bool:
    """Whether a layer with these names is selected by `include` (every layer when empty)."""
    return not patterns or any(re.search(p, name) for p in patterns for name in names if name)


def selected(
    include: Sequence[str], exclude: Sequence[str], node: gs.Node, names: Sequence[str] = ()
) -> bool:
    """Whether `include` selects a layer and `exclude` leaves it.

    Its names are the node's, those of its constant inputs and any `names` given.
    """
    constants = [t.name for t in node.inputs[:2] if isinstance(t, gs.Constant)]
    every = [node.name or "", *constants, *names]
    return included(include, every) and not excluded(exclude, node.op, every)


def check_budget_cosine(value: float | None) -> None:
    """Raise ValueError unless the budget is None or in (0, 1]."""
    if value is not None and not 0.0 < value <= 1.0:
        raise ValueError(f"budget-cosine {value}: expected 0 < budget <= 1")


def excluded(patterns: Sequence[str], op: str, names: Iterable[str]) -> bool:
    """Whether a layer with op type `op` and these node and weight names is excluded."""
    names = [name for name in names if name]
    for pattern in patterns:
        if pattern == op or pattern in names:
            return True
        if is_glob(pattern):
            if any(fnmatch.fnmatchcase(name, pattern) for name in names):
                return True
        elif any(re.search(pattern, name) for name in names):
            return True
    return False
