"""Pass stats as a person reads them: counts as ints, per-layer stats nested per layer.

Passes report flat `Mapping[str, float]` stats; their per-item stats are spelled in three ways:

- `layer.<name>.<stat>`, `activation.<tensor>.<stat>`, `table.<name>.<stat>` (quantize-insert,
  factorize-matmul): nested as `{"layers": {name: {stat: v}}}`, `"activations"`, `"tables"`;
- `<stat>:<unit>` (prune-sparsify): nested as `{"layers": {unit: {stat: v}}}`;
- `before.<op>`, `after.<op>` (fold's op counts): nested as `{"ops": {"before": {op: n}}}`.

Names may hold dots (`/encoder/layer.0/...`), so a stat is the text after the last dot. A value
becomes an int when it is a whole number and its stat does not name a measure that is a fraction
by nature (a cosine, an error, a ratio, a sparsity, ...), so `nodes_before` reads 673, while a
cosine of exactly 1 stays 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

GROUPS = {"layer": "layers", "activation": "activations", "table": "tables"}
SIDES = ("before", "after")
MEASURES = ("cosine", "error", "ratio", "sparsity", "sensitivity", "seconds", "range", "loss")


def readable_stats(stats: Mapping[str, float]) -> dict[str, Any]:
    """Flat pass stats with per-item stats nested and whole-number counts as ints."""
    nested: dict[str, Any] = {}
    for key, value in stats.items():
        group, item, stat = split_key(key)
        number = readable_number(stat, value)
        if group is None:
            nested[stat] = number
        else:
            nested.setdefault(group, {}).setdefault(item, {})[stat] = number
    return nested


def split_key(key: str) -> tuple[str | None, str, str]:
    """A stat key as (group, item, stat); group None for a stat of the whole pass."""
    head, dot, rest = key.partition(".")
    if dot and head in GROUPS and "." in rest:
        item, stat = rest.rsplit(".", 1)
        return GROUPS[head], item, stat
    if dot and head in SIDES and rest:
        return "ops", head, rest
    stat, colon, unit = key.partition(":")
    if colon and stat and unit:
        return "layers", unit, stat
    return None, "", key


def readable_number(stat: str, value: Any) -> Any:
    """`value` as an int when it is a whole-number count, else unchanged."""
    if isinstance(value, bool) or not isinstance(value, float):
        return value
    if not math.isfinite(value) or not value.is_integer() or is_measure(stat):
        return value
    return int(value)


def is_measure(stat: str) -> bool:
    """Whether a stat names a measure that is a fraction by nature, never a count."""
    return any(word in stat for word in MEASURES)
