"""A build on one screen: what went in, what came out, how close it stays, where to look next.

Read from an artifact's manifest (after `compile`, and by `inspect DIR`) or from the same fields
gathered after `opt`. Every line is optional: a field the record lacks leaves its line out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nlpress.passes import parse

Record = Mapping[str, Any]


def overview(
    record: Record, where: str, seconds: float | None = None, report: str | None = None
) -> str:
    """The record of the build that wrote `where` in `seconds`, as aligned lines for a terminal."""
    lines = [_headline(record, where, seconds)]
    for label, line in _LINES:
        text = line(record)
        if text:
            lines.append(f"  {label:<11}{text}")
    if report:
        lines.append(f"  {'report':<11}{report}")
    return "\n".join(lines)


def _headline(record: Record, where: str, seconds: float | None) -> str:
    target = record.get("target")
    what = "compiled" if target else "optimized"
    source = record.get("source", {}).get("zoo") or "the model"
    parts = [f"{what} {source}"]
    if target:
        mcpu = target.get("tvm_target", {}).get("mcpu") or target.get("arch")
        parts.append(f"for {target['name']}" + (f" ({mcpu})" if mcpu else ""))
    if seconds is not None:
        parts.append(f"in {seconds:.0f} s")
    return " ".join(parts) + f": {where}"


def _size(record: Record) -> str:
    sizes = record.get("sizes", {})
    parts = []
    if "before" in sizes and "after" in sizes:
        before, after = (_bytes(sizes[k]) for k in ("before", "after"))
        ratio = f" ({before / after:.1f}x smaller)" if after and before > after * 1.01 else ""
        parts.append(f"weights {_mib(before)} -> {_mib(after)}{ratio}")
    library = record.get("library", {}).get("bytes")
    if library:
        parts.append(f"model.so {_mib(library)}")
    return "; ".join(parts)


def _parameters(record: Record) -> str:
    sizes = record.get("sizes", {})
    if "before" not in sizes or "after" not in sizes:
        return ""
    before, after = sizes["before"]["parameters"], sizes["after"]["parameters"]
    by_dtype = sizes["after"].get("bytes_by_dtype", {})
    total = sum(by_dtype.values()) or 1
    dtypes = ", ".join(f"{k} {_mib(v)}" for k, v in by_dtype.items() if v >= total / 100)
    return f"{before / 1e6:.2f}M -> {after / 1e6:.2f}M" + (f" ({dtypes})" if dtypes else "")


def _held_out(record: Record) -> str:
    fidelity = record.get("fidelity", {})
    found = fidelity.get("heldout")
    if not found:
        return str(fidelity.get("heldout_note", ""))
    return (
        f"mean cosine {found['mean_cosine']:.4f}, min {found['min_cosine']:.4f} on "
        f"{found['sentences']} held-out sentences ({found['text']}), against the source"
    )


def _checked(record: Record) -> str:
    found = record.get("fidelity", {}).get("tvm_vs_onnxruntime", {})
    if not found.get("checked"):
        return str(found.get("reason", ""))
    return f"model.so against model.onnx in ONNX Runtime: max abs diff {found['worst']:.3g}"


def _budgets(record: Record) -> str:
    said = []
    for entry in record.get("passes", []):
        stats = entry.get("stats", {})
        if "budget_met" not in stats:
            continue
        wanted = getattr(parse(entry["text"]).passes[0], "budget_cosine", None)
        met = "met" if stats["budget_met"] else "NOT met"
        reached = stats.get("budget_cosine")
        asked = f" {wanted:g}" if wanted is not None else ""
        value = f", reached {reached:.4f}" if reached is not None else ""
        said.append(f"{entry['text'].split('{')[0]} budget-cosine{asked} {met}{value}")
    return "; ".join(said)


def _bytes(summary: Mapping[str, Any]) -> int:
    return int(summary["bytes"])


def _mib(count: float) -> str:
    return f"{count / 2**20:.1f} MiB"


_LINES: tuple[tuple[str, Callable[[Record], str]], ...] = (
    ("pipeline", lambda r: str(r.get("pipeline", ""))),
    ("size", _size),
    ("parameters", _parameters),
    ("fidelity", _held_out),
    ("checked", _checked),
    ("budget", _budgets),
)
