"""Textual pipelines: `fold,prune-sparsify{sparsity=0.5 pattern=2:4},quantize-insert`.

Passes are separated by commas outside braces; a pass's options sit in braces, separated by
spaces, kebab-case keys mapping to snake_case fields. `str(pipeline)` prints the canonical text
with every option, which parses back to an equal pipeline.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from nlpress.ir import UsageError
from nlpress.passes.base import OptionError, Pass, option_fields

_STEP = re.compile(r"^\s*([A-Za-z0-9][\w-]*)\s*(?:\{(.*)\})?\s*$", re.DOTALL)


class PipelineSyntaxError(UsageError):
    """Pipeline text that does not parse, or names an unknown pass."""


@dataclass(frozen=True)
class Pipeline:
    """An ordered sequence of configured passes."""

    passes: tuple[Pass, ...]

    def __str__(self) -> str:
        """The canonical text of the pipeline."""
        return ",".join(str(p) for p in self.passes)

    def __iter__(self) -> Iterator[Pass]:
        """The passes in order."""
        return iter(self.passes)

    def __len__(self) -> int:
        """The number of passes."""
        return len(self.passes)


def parse_pipeline(
    text: str, registry: Mapping[str, type[Pass]], named: Mapping[str, str] | None = None
) -> Pipeline:
    """Parse pipeline text (or a named pipeline) against a registry of pass classes."""
    named = named or {}
    if text.strip() in named:
        text = named[text.strip()]
    steps = _split_top_level(text)
    if not steps:
        raise PipelineSyntaxError("empty pipeline: name at least one pass")
    return Pipeline(tuple(_parse_step(step, registry, named) for step in steps))


def _parse_step(step: str, registry: Mapping[str, type[Pass]], named: Mapping[str, str]) -> Pass:
    match = _STEP.match(step)
    if not match:
        raise PipelineSyntaxError(f"cannot parse pipeline step {step.strip()!r}")
    name, body = match.group(1), match.group(2)
    if name not in registry:
        valid = ", ".join(sorted(registry))
        hint = f"; named pipelines: {', '.join(sorted(named))}" if named else ""
        raise PipelineSyntaxError(f"unknown pass {name!r}; valid passes: {valid}{hint}")
    cls = registry[name]
    options = _parse_options(cls, body or "")
    try:
        return cls(**options)
    except (ValueError, TypeError) as exc:
        raise OptionError(f"{name}: {exc}") from exc


def _parse_options(cls: type[Pass], body: str) -> dict[str, Any]:
    fields = option_fields(cls)
    hints = typing.get_type_hints(cls)
    options: dict[str, Any] = {}
    for item in _split_options(body):
        key, sep, raw = item.partition("=")
        if not sep:
            raise OptionError(f"{cls.name}: option {item!r} needs a value, as key=value")
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise OptionError(f"{cls.name}: unknown option {key!r}; valid options: {valid}")
        field = fields[key]
        if field.name in options:
            raise OptionError(f"{cls.name}: option {key} is given twice; give it once")
        parse = field.metadata.get("parse")
        try:
            value = parse(raw) if parse else parse_value(hints[field.name], raw)
        except ValueError as exc:
            raise OptionError(f"{cls.name}: option {key}={raw!r}: {exc}") from exc
        options[field.name] = value
    return options


def parse_value(kind: Any, raw: str) -> Any:
    """Parse option text into a value of the field's annotated type."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if raw == "none" and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(arg, raw)
            except ValueError:
                continue
        raise ValueError(f"expected {kind}")
    if origin is typing.Literal:
        if raw not in [str(a) for a in args]:
            raise ValueError(f"expected one of {', '.join(map(str, args))}")
        return next(a for a in args if str(a) == raw)
    if origin is tuple:
        return tuple(parse_value(args[0], part) for part in raw.split(",") if part)
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError("expected true or false")
        return raw.lower() in ("true", "1")
    if kind in (int, float, str):
        return kind(raw)
    raise ValueError(f"unsupported option type {kind}")


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside braces."""
    steps: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise PipelineSyntaxError(f"unbalanced '}}' in pipeline {text!r}")
        if char == "," and depth == 0:
            steps.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise PipelineSyntaxError(f"unbalanced '{{' in pipeline {text!r}")
    steps.append("".join(current))
    if not text.strip():
        return []
    if any(not s.strip() for s in steps):
        raise PipelineSyntaxError(f"empty step in pipeline {text!r}")
    return steps


def _split_options(body: str) -> list[str]:
    """Split on whitespace outside double quotes; quotes are removed."""
    return [part.replace('"', "") for part in re.findall(r'(?:[^\s"]|"[^"]*")+', body)]
