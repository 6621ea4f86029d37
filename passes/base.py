"""The pass contract: a Pass rewrites a Model and reports a PassResult.

A pass's options are the fields of its frozen dataclass, validated in `__post_init__` and
documented in the class docstring's `Options:` section (the command line's help comes from it).
Passes never print; instruments around them report.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from nlpress.ir import Feeds, Model, NlpressError, UsageError
from nlpress.ir.verify import check


class PreconditionError(NlpressError):
    """A pass cannot run on this model; the message says what to change."""


class OptionError(UsageError):
    """A pass option with a wrong name or value."""


@dataclass(frozen=True)
class PassResult:
    """What a pass made.

    Attributes:
        model: The rewritten model (the input model is left as it was).
        changed: Whether the graph differs from the input: exact both ways.
        stats: Numbers about the rewrite, e.g. {"removed": 12, "params_after": 9.1e6}.

    """

    model: Model
    changed: bool
    stats: Mapping[str, float]


@dataclass(frozen=True)
class Pass(abc.ABC):
    """A graph rewrite with options.

    Subclasses are frozen dataclasses; `name` is kebab-case and unique; `tolerance` is the largest
    output difference the rewrite may cause on generated feeds (0-ish for exact passes, None for
    lossy passes whose accuracy is measured on real data instead); `needs_calibration` passes
    may read the calibration batches that `run` receives as `data` (`passes.calibration`), which
    exact passes ignore; `adds_outputs` passes keep the model's outputs and add new ones after them.
    """

    name: ClassVar[str]
    tolerance: ClassVar[float | None] = 1e-5
    needs_calibration: ClassVar[bool] = False
    adds_outputs: ClassVar[bool] = False

    def requires(self, model: Model) -> None:  # noqa: B027 - optional hook
        """Raise PreconditionError if the pass cannot run on `model` (`run` checks its data)."""

    def check_order(self, earlier: Sequence[Pass]) -> None:  # noqa: B027 - optional hook
        """Raise PreconditionError if this pass cannot follow the passes `earlier` in a pipeline."""

    @abc.abstractmethod
    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        """Rewrite a copy of `model`; lossy passes may read the calibration batches `data`."""

    def ensures(self, model: Model) -> None:
        """Check the pass's output; by default the ONNX checker with shape inference."""
        check(model)

    def __str__(self) -> str:
        """The canonical pipeline text of this pass: every option but empty defaults.

        An option left at an empty default (no shapes, nothing excluded) says nothing and is
        left out, as is a deprecated spelling left at its default; parsing the text gives the
        same pass either way.
        """
        options = " ".join(
            f"{key}={text}"
            for key, f in option_fields(type(self)).items()
            if (text := option_text(f, getattr(self, f.name))) or option_text(f, option_default(f))
            if not (f.metadata.get("deprecated") and getattr(self, f.name) == option_default(f))
        )
        return f"{self.name}{{{options}}}" if options else self.name

    @classmethod
    def summary(cls) -> str:
        """The first line of the pass's docstring."""
        return (inspect.getdoc(cls) or "").splitlines()[0]

    @classmethod
    def option_help(cls) -> dict[str, str]:
        """Each option's description: its field's `help`, else the docstring's `Options:` entry."""
        documented = _docstring_section(inspect.getdoc(cls) or "", "Options")
        return {
            key: f.metadata.get("help", documented.get(key, ""))
            for key, f in option_fields(cls).items()
            if "help" in f.metadata or key in documented
        }


def option_fields(cls: type[Pass]) -> dict[str, dataclasses.Field[Any]]:
    """The pass's options by kebab-case key."""
    return {f.name.replace("_", "-"): f for f in dataclasses.fields(cls) if f.init}


def option_default(f: dataclasses.Field[Any]) -> Any:
    """An option's default value."""
    if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def option_text(f: dataclasses.Field[Any], value: object) -> str:
    """An option value as pipeline text, through the field's own format where it has one."""
    return str(f.metadata.get("format", format_value)(value))


def format_value(value: object) -> str:
    """An option value as pipeline text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}:{format_value(v)}" for k, v in value.items())
    if value is None:
        return "none"
    return str(value)


def parse_shapes(text: str) -> dict[str, tuple[int | str, ...]]:
    """Parse `name:1x128,other:1x128` (dims are sizes or symbolic names) into a mapping."""
    shapes: dict[str, tuple[int | str, ...]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, dims = item.rpartition(":")
        if not sep or not name or not dims:
            raise OptionError(f"shape {item!r}: expected NAME:DIMS, e.g. input_ids:1x128")
        if name in shapes:
            raise OptionError(f"shape {name} is given twice; give each input once")
        shapes[name] = parse_dims(dims)
    return shapes


def parse_dims(text: str) -> tuple[int | str, ...]:
    """Parse `1x128` (or `batchx128` for a symbolic dim) into a dims tuple."""
    dims: list[int | str] = []
    for part in text.split("x") if text else []:
        if part.isdigit():
            dims.append(int(part))
        elif re.fullmatch(r"[A-Za-z_][\w]*", part):
            dims.append(part)
        else:
            raise OptionError(f"dims {text!r}: expected sizes joined by 'x', e.g. 1x128")
    return tuple(dims)


def format_shapes(shapes: Mapping[str, tuple[int | str, ...]]) -> str:
    """The text form of a shapes mapping, as `parse_shapes` reads it."""
    return ",".join(f"{name}:{'x'.join(map(str, dims))}" for name, dims in shapes.items())


# Field metadata for an option holding input shapes.
SHAPES_OPTION = {"parse": parse_shapes, "format": format_shapes}


def _docstring_section(doc: str, title: str) -> dict[str, str]:
    match = re.search(rf"^{title}:\n((?:[ \t]+.*\n?|\n)*)", doc, flags=re.MULTILINE)
    if not match:
        return {}
    entries: dict[str, str] = {}
    key = None
    for line in match.group(1).splitlines():
        head = re.match(r"^\s{4}([\w-]+):\s*(.*)$", line)
        if head:
            key = head.group(1).replace("_", "-")
            entries[key] = head.group(2)
        elif key and line.strip():
            entries[key] += " " + line.strip()
    return entries
