"""What the planner measured once, kept in JSON files named by a digest of what it depends on.

A kernel's cost depends on the target, the CPU and the lowering's source; a part's loss on the
model, the calibration batches and the passes' source. Each is written as soon as it is
measured, so a planning run that stops resumes where it stopped; a file that cannot be read
or written costs time, never a result.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nlpress.ir import Feeds
from nlpress.models import zoo

log = logging.getLogger(__name__)


def cache_file(name: str) -> Path:
    """Where the planner keeps the results named `name`."""
    return zoo.cache_dir().parent / "planner" / f"{name}.json"


def read(name: str) -> dict[str, Any]:
    """The results kept as `name`; empty when there are none or they cannot be read."""
    try:
        found = json.loads(cache_file(name).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write(name: str, results: dict[str, Any]) -> None:
    """Keep `results` as `name`, replacing what was kept (never a half-written file)."""
    path = cache_file(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(results, indent=0, sort_keys=True))
        partial.replace(path)
    except OSError as exc:
        log.warning("planner results not kept: %s", exc)


def digest(parts: Iterable[bytes | str]) -> str:
    """A short digest of `parts` in order."""
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(part.encode() if isinstance(part, str) else part)
        hashed.update(b"\0")
    return hashed.hexdigest()[:16]


@functools.cache
def source_digest(*packages: str) -> str:
    """A digest of the Python and C sources of `packages`: results of other code do not carry."""
    files = []
    for package in packages:
        folder = Path(importlib.import_module(package).__file__ or "").parent
        files += sorted(p for p in folder.rglob("*") if p.suffix in (".py", ".c"))
    return digest(path.read_bytes() for path in files)


def file_digest(path: str) -> str:
    """A digest of one source file."""
    return digest([Path(path).read_bytes()])


def feeds_digest(feeds: Sequence[Feeds]) -> str:
    """A digest of calibration batches: names, types, shapes and values."""
    return digest(
        part
        for batch in feeds
        for name in sorted(batch)
        for part in (name, str(batch[name].dtype), str(batch[name].shape), batch[name].tobytes())
    )
