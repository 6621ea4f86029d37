"""TOML build files: the options of `nlpress compile` and `nlpress opt`, kept beside a project.

    [build]
    model = "minilm-l6"
    target = "x86"
    pipeline = "O1"
    output = "build/x86"
    mcpu = "znver4"
    pooling = "mean"
    normalize = true
    embedding = "last_hidden_state"

    [build.shape]
    input_ids = "1x128"
    attention_mask = "1x128"

Flags given on the command line override the file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from nlpress.ir import UsageError
from nlpress.passes.base import parse_dims


@dataclass(frozen=True)
class BuildConfig:
    """The `[build]` table of a build file; every key is optional."""

    model: str | None = None
    target: str | None = None
    pipeline: str | None = None
    output: str | None = None
    mcpu: str | None = None
    mattr: tuple[str, ...] = ()
    arch: str | None = None
    pooling: str | None = None
    normalize: bool = False
    tokenizer: str | None = None
    embedding: str | None = None
    shape: dict[str, tuple[int | str, ...]] = field(default_factory=dict)


def load_config(path: str | os.PathLike[str]) -> BuildConfig:
    """Read a build file, or fail with one line naming the file and the problem."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read build file ({exc})") from exc
    build = data.get("build")
    if not isinstance(build, dict) or set(data) - {"build"}:
        raise UsageError(f"{path}: a build file holds one table, [build]")
    valid = {f.name for f in fields(BuildConfig)}
    unknown = sorted(set(build) - valid)
    if unknown:
        raise UsageError(
            f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(valid))}"
        )
    return _typed(path, build)


def _typed(path: str | os.PathLike[str], build: dict[str, object]) -> BuildConfig:
    values: dict[str, object] = {}
    for key, value in build.items():
        if key == "shape":
            if not isinstance(value, dict):
                raise UsageError(f'{path}: [build.shape] maps input names to dims like "1x128"')
            values[key] = {name: parse_dims(str(dims)) for name, dims in value.items()}
        elif key == "mattr":
            if not isinstance(value, list):
                raise UsageError(f'{path}: mattr is a list of strings, e.g. ["+dotprod"]')
            values[key] = tuple(str(v) for v in value)
        elif key == "normalize":
            if not isinstance(value, bool):
                raise UsageError(f"{path}: normalize is true or false")
            values[key] = value
        elif isinstance(value, str):
            values[key] = value
        else:
            raise UsageError(f"{path}: {key} must be a string")
    return BuildConfig(**values)  # type: ignore[arg-type]
