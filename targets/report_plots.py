"""Plots of report.html: matplotlib figures rendered to inline SVG text.

matplotlib is imported when the first plot is drawn, never by `nlpress --help` or
`nlpress.load`. Figures are made with `matplotlib.figure.Figure`, not pyplot, so no global
backend or figure state changes in the caller's process. Text is drawn as paths (no font files
to fetch), and the SVG's metadata and namespace declarations are left out: an SVG inside HTML
needs neither, and the page then names no URL at all.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

WIDTH = 8.0  # inches
BAR_HEIGHT = 0.22  # inches per bar row
LABEL_CHARS = 56  # longer tick labels are cut in the middle (tables keep the full names)
COLORS = ("#7f8c9a", "#2a7ab0", "#d9822b", "#3a9d5d")
MIN_HALF_WIDTH = 1e-6  # a histogram of values that (nearly) agree still gets finite bins

_PROLOGUE = re.compile(r"^.*?(?=<svg)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_NAMESPACES = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')


def bars(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    *,
    log: bool = False,
) -> str:
    """Horizontal bars, one group per label and one bar per series, as SVG text.

    The title is the page's caption of the plot, not drawn in it; it salts the SVG's ids.
    """
    figure = _figure(0.9 + BAR_HEIGHT * len(labels) * max(1, len(series)) ** 0.5)
    axes = figure.add_subplot()
    height = 0.8 / max(1, len(series))
    rows = range(len(labels))
    for index, (name, values) in enumerate(series.items()):
        offsets = [r + (index - (len(series) - 1) / 2) * height for r in rows]
        axes.barh(offsets, values, height=height, label=name, color=COLORS[index % len(COLORS)])
    axes.set_yticks(list(rows), labels=[_cut(label) for label in labels], fontsize=7)
    axes.invert_yaxis()
    if log:
        axes.set_xscale("log")
    _finish(axes, xlabel, legend=len(series) > 1)
    return _svg(figure, title)


def histogram(title: str, values: Sequence[float], xlabel: str, marks: Mapping[str, float]) -> str:
    """A histogram of `values` with a vertical line at each mark (e.g. mean, minimum)."""
    figure = _figure(3.0)
    axes = figure.add_subplot()
    low, high = min(values), max(values)
    middle, half = (low + high) / 2, max((high - low) / 2, MIN_HALF_WIDTH)
    bins = min(40, max(5, len(values) // 3))
    axes.hist(list(values), bins=bins, range=(middle - half, middle + half), color=COLORS[1])
    for index, (name, value) in enumerate(marks.items()):
        axes.axvline(
            value, color=COLORS[2 + index % 2], linestyle="--", label=f"{name} {value:.4f}"
        )
    axes.set_ylabel("sentences", fontsize=8)
    _finish(axes, xlabel, legend=bool(marks))
    return _svg(figure, title)


def _cut(label: str) -> str:
    """A tick label of at most LABEL_CHARS characters, its middle elided."""
    if len(label) <= LABEL_CHARS:
        return label
    half = (LABEL_CHARS - 1) // 2
    return f"{label[:half]}…{label[-half:]}"


def _figure(height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(WIDTH, max(2.2, height)), layout="constrained")


def _finish(axes: Any, xlabel: str, *, legend: bool) -> None:
    axes.set_xlabel(xlabel, fontsize=8)
    axes.tick_params(axis="x", labelsize=7)
    axes.grid(axis="x", color="#e3e6ea", linewidth=0.6)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    if legend:
        axes.legend(fontsize=7, frameon=False)


def _svg(figure: Any, salt: str) -> str:
    """The figure as an `<svg>` element; ids are salted by the title, unique on one page."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "path"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = _PROLOGUE.sub("", buffer.getvalue(), count=1)
    text = _METADATA.sub("", text)
    return _NAMESPACES.sub("", text, count=2)
