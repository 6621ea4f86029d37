"""report.html: one self-contained page of what a build or an `opt` run did.

The page is made of sections, each a heading, a few tables and plots (inline SVG, see
`report_plots.py`), built from the manifest (and, for an artifact, report.json): the pipeline
and each pass's effect, sizes by dtype and by layer before and after, the per-layer decisions
and measurements of the lossy passes, fidelity, latency by kernel, and the artifact itself.
Every string from the model or the user is escaped; the page loads nothing from anywhere.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nlpress.ir.staging import staging_file
from nlpress.targets import report_plots as plots

# Per-layer stats worth a plot, in order of preference: the first one a pass records is drawn.
LAYER_PLOTS = {
    "sensitivity": "cosine gained by keeping the layer float",
    "sparsity": "share of weights pruned",
    "r": "rank kept",
    "output_error": "relative output error",
}
MOST_LAYERS = 60  # size plots show the largest layers, this many at most
MOST_KERNELS = 20
KEY_STATS = 8  # stats shown beside a pass; the rest fold away

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1.5em;color:#1d2733}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #d5dbe1;padding-bottom:.2em;
margin-top:2em}h3{font-size:1.05em;margin-top:1.4em}.sub{color:#5b6875}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #d5dbe1;
padding:.25em .6em;text-align:left;vertical-align:top}td.n{text-align:right;
font-variant-numeric:tabular-nums}th{background:#f1f4f7}.cards{display:flex;flex-wrap:wrap;
gap:.8em}.card{border:1px solid #d5dbe1;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.3em}figure{margin:.8em 0}figcaption{font-weight:600}
figure svg{max-width:100%;height:auto}
.note{background:#fff8e6;border-left:4px solid #d9822b;padding:.4em .8em}code{font-size:.9em}
"""


def write_report(
    path: str | os.PathLike[str],
    manifest: Mapping[str, Any],
    report: Mapping[str, Any] | None = None,
) -> Path:
    """Render the page and write it atomically to `path`."""
    target = Path(path)
    text = render(manifest, report)
    with staging_file(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def render(manifest: Mapping[str, Any], report: Mapping[str, Any] | None = None) -> str:
    """The page for a manifest (a build's, or an `opt` run's record) and its report.json."""
    artifact = "target" in manifest
    sections = [
        _summary(manifest),
        _pipeline(manifest.get("passes", [])),
        _sizes(manifest.get("sizes", {})),
        _decisions(manifest.get("passes", [])),
        _fidelity(manifest.get("fidelity", {}), manifest.get("passes", [])),
    ]
    if artifact:
        sections += [_kernels((report or {}).get("kernels")), _artifact(manifest)]
    title = "nlpress build report" if artifact else "nlpress optimization report"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        f"<h1>{_e(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


# --- sections ---------------------------------------------------------------------------------


def _section(key: str, title: str, *parts: str) -> str:
    return f'<section id="{key}">\n<h2>{_e(title)}</h2>\n' + "\n".join(parts) + "\n</section>"


def _summary(manifest: Mapping[str, Any]) -> str:
    source = manifest.get("source") or {}
    sizes = manifest.get("sizes") or {}
    before, after = sizes.get("before") or {}, sizes.get("after") or {}
    cards = [("model", source.get("zoo") or "file " + str(source.get("sha256") or "?")[:12])]
    if "target" in manifest:
        cards.append(("target", _target_text(manifest)))
    if before and after:
        cards.append(
            ("parameters", f"{_count(before['parameters'])} → {_count(after['parameters'])}")
        )
        cards.append(("weights", f"{_bytes(before['bytes'])} → {_bytes(after['bytes'])}"))
    if "library_bytes" in sizes:
        cards.append(("model.so", _bytes(sizes["library_bytes"])))
    heldout = (manifest.get("fidelity") or {}).get("heldout")
    if isinstance(heldout, Mapping) and "mean_cosine" in heldout:
        cards.append(("held-out cosine", f"mean {heldout['mean_cosine']:.4f}"))
    html_cards = "".join(f'<div class="card">{_e(k)}<b>{_e(v)}</b></div>' for k, v in cards)
    pipeline = f'<p class="sub">pipeline <code>{_e(manifest.get("pipeline", ""))}</code></p>'
    return _section("summary", "Summary", pipeline, f'<div class="cards">{html_cards}</div>')


def _pipeline(passes: Sequence[Mapping[str, Any]]) -> str:
    if not passes:
        return _section("pipeline", "Pipeline", _note("no passes recorded"))
    rows = [
        [
            p["text"].split("{")[0],
            "yes" if p["changed"] else "no",
            _seconds(p["seconds"]),
            _stats_cell(p["stats"]),
        ]
        for p in passes
    ]
    table = _table(["pass", "changed", "time", "key stats"], rows, raw=(3,))
    texts = "".join(f"<li><code>{_e(p['text'])}</code></li>" for p in passes)
    title = "Time per pass"
    figure = plots.bars(
        title,
        [p["text"].split("{")[0] for p in passes],
        {"seconds": [float(p["seconds"]) for p in passes]},
        "seconds",
    )
    return _section(
        "pipeline",
        "Pipeline",
        table,
        _figure(title, figure),
        f"<h3>Passes as run</h3><ol>{texts}</ol>",
    )


def _sizes(sizes: Mapping[str, Any]) -> str:
    before, after = sizes.get("before"), sizes.get("after")
    if not (before and after):
        return _section("sizes", "Size", _note("no sizes recorded"))
    dtypes = sorted(set(before["bytes_by_dtype"]) | set(after["bytes_by_dtype"]))
    series = {
        side: [s["bytes_by_dtype"].get(d, 0) / 2**20 for d in dtypes]
        for side, s in (("before", before), ("after", after))
    }
    rows = [
        [d, _bytes(before["bytes_by_dtype"].get(d, 0)), _bytes(after["bytes_by_dtype"].get(d, 0))]
        for d in dtypes
    ]
    rows.append(["all", _bytes(before["bytes"]), _bytes(after["bytes"])])
    parts = [
        "<h3>By dtype</h3>",
        _figure(
            "Stored bytes by dtype", plots.bars("Stored bytes by dtype", dtypes, series, "MiB")
        ),
        _table(["dtype", "before", "after"], rows),
        "<h3>By layer</h3>",
        *_layer_sizes(before["layers"], after["layers"]),
    ]
    return _section("sizes", "Size", *parts)


def _layer_sizes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    names = list(dict.fromkeys([*before, *after]))
    if not names:
        return [_note("no weighted layers (MatMul, Gemm, embedding Gather) in this model")]
    largest = sorted(names, key=lambda n: -max(_size(before, n), _size(after, n)))[:MOST_LAYERS]
    shown = [n for n in names if n in largest]
    labels = short_names(shown)
    series = {
        "before": [_size(before, n) / 2**10 for n in shown],
        "after": [_size(after, n) / 2**10 for n in shown],
    }
    rows = [
        [label, _layer_text(before.get(n)), _layer_text(after.get(n))]
        for label, n in zip(labels, shown, strict=True)
    ]
    note = f"<p class='sub'>the {len(shown)} largest of {len(names)} layers</p>"
    title = "Stored bytes by layer"
    figure = plots.bars(title, labels, series, "KiB (log scale)", log=True)
    return [
        note if len(shown) < len(names) else "",
        _figure(title, figure),
        _table(["layer", "before", "after"], rows),
    ]


def _decisions(passes: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for p in passes:
        stats = p["stats"]
        name = p["text"].split("{")[0]
        for group in ("layers", "activations", "tables"):
            items = stats.get(group)
            if isinstance(items, Mapping) and items:
                parts.extend(_per_item(name, group, items))
    if not parts:
        parts = [_note("no pass in this pipeline made per-layer decisions")]
    return _section("decisions", "Per-layer decisions and measurements", *parts)


def _per_item(pass_name: str, group: str, items: Mapping[str, Mapping[str, Any]]) -> list[str]:
    names = list(items)
    labels = short_names(names)
    columns = list(dict.fromkeys(k for entry in items.values() for k in entry))
    rows = [
        [label, *(_value(items[n].get(c, "")) for c in columns)]
        for label, n in zip(labels, names, strict=True)
    ]
    parts = [f"<h3>{_e(pass_name)}: {_e(group)} ({len(names)})</h3>", _decision_counts(items)]
    plotted = [s for s in LAYER_PLOTS if any(s in e for e in items.values())]
    if group == "activations" and "range" in columns:
        plotted = ["range"]
    for stat in plotted[:1]:
        values = [float(items[n].get(stat, 0.0)) for n in names]
        what = LAYER_PLOTS.get(stat, "calibrated range (max - min)")
        title = f"{pass_name}: {stat} per {group[:-1]}"
        parts.append(_figure(title, plots.bars(title, labels, {stat: values}, what)))
    parts.append(_table([group[:-1], *columns], rows))
    return parts


def _decision_counts(items: Mapping[str, Mapping[str, Any]]) -> str:
    """How many items each decision took: stats that are flags (always 1 where recorded)."""
    flags = [
        stat
        for stat in dict.fromkeys(k for entry in items.values() for k in entry)
        if all(entry.get(stat, 1) == 1 for entry in items.values())
    ]
    counts = [f"{_e(stat)} {sum(stat in e for e in items.values())}" for stat in flags]
    return f"<p class='sub'>{', '.join(counts)} of {len(items)}</p>" if counts else ""


def _fidelity(fidelity: Mapping[str, Any], passes: Sequence[Mapping[str, Any]]) -> str:
    parts = ["<h3>Held-out sentences</h3>", *_heldout(fidelity.get("heldout"))]
    budgets = [
        [
            p["text"].split("{")[0],
            _value(p["stats"].get("budget_cosine_first", "")),
            _value(p["stats"]["budget_cosine"]),
            "yes" if p["stats"].get("budget_met") else "no",
        ]
        for p in passes
        if "budget_cosine" in p["stats"]
    ]
    if budgets:
        parts += [
            "<h3>Cosine budgets (pooled output on calibration text)</h3>",
            _table(["pass", "first", "reached", "met"], budgets),
        ]
    check = fidelity.get("tvm_vs_onnxruntime")
    if isinstance(check, Mapping):
        parts += ["<h3>Compiled library against ONNX Runtime</h3>", *_tvm_check(check)]
    return _section("fidelity", "Fidelity", *parts)


def _heldout(heldout: Any) -> list[str]:
    if not isinstance(heldout, Mapping) or not heldout.get("per_sentence"):
        return [_note("no held-out per-sentence cosine was recorded for this run")]
    values = [float(v) for v in heldout["per_sentence"]]
    marks = {
        "mean": float(heldout.get("mean_cosine", sum(values) / len(values))),
        "min": float(heldout.get("min_cosine", min(values))),
    }
    title = f"Per-sentence cosine to the source model ({len(values)} sentences)"
    rows = [
        ["text", heldout.get("text", "")],
        ["sentences", _count(len(values))],
        ["mean cosine", _value(marks["mean"])],
        ["min cosine", _value(marks["min"])],
    ]
    figure = plots.histogram(title, values, "cosine", marks)
    return [_figure(title, figure), _table(["", ""], rows)]


def _tvm_check(check: Mapping[str, Any]) -> list[str]:
    if not check.get("checked"):
        return [_note(f"not checked: {check.get('reason', '')}")]
    dims = ", ".join(f"{k} {v}" for k, v in (check.get("dims") or {}).items())
    rows = [[name, _value(diff)] for name, diff in check.get("max_abs_diff", {}).items()]
    return [
        f"<p class='sub'>seeded random feeds, {_e(dims)}</p>",
        _table(["output", "max abs diff"], rows),
    ]


def _kernels(kernels: Any) -> str:
    if not isinstance(kernels, Mapping) or not kernels.get("measured"):
        reason = kernels.get("reason", "") if isinstance(kernels, Mapping) else "not recorded"
        return _section("kernels", "Latency by kernel", _note(f"not measured: {reason}"))
    calls = kernels["kernels"][:MOST_KERNELS]
    dims = ", ".join(f"{k} {v}" for k, v in (kernels.get("dims") or {}).items())
    intro = (
        f"<p class='sub'>one run at {_e(dims)} on the build machine, after a warm-up run; "
        f"kernels {_seconds(kernels['total_seconds'] - kernels['builtin_seconds'])}, "
        f"virtual machine builtins {_seconds(kernels['builtin_seconds'])}</p>"
    )
    names = [str(k["name"]) for k in calls]
    micros = [float(k["seconds"]) * 1e6 for k in calls]
    title = f"Slowest {len(calls)} kernels"
    figure = plots.bars(title, names, {"µs": micros}, "µs")
    rows = [[k["name"], _count(k["calls"]), _seconds(k["seconds"])] for k in calls]
    return _section(
        "kernels",
        "Latency by kernel",
        intro,
        _figure(title, figure),
        _table(["kernel", "calls", "time"], rows),
    )


def _artifact(manifest: Mapping[str, Any]) -> str:
    library = manifest.get("library") or {}
    rows = [
        ["target", _target_text(manifest)],
        [
            "kernels",
            ", ".join(
                f"{k} {v}" for k, v in (manifest.get("code") or {}).get("kernels", {}).items()
            ),
        ],
        ["model.so", f"{_bytes(library.get('bytes', 0))}, sha256 {library.get('sha256', '')}"],
        ["nlpress / TVM", f"{manifest.get('nlpress_version')} / {manifest.get('tvm_version')}"],
        ["lowering time", _seconds(manifest.get("build_seconds", 0.0))],
        ["source sha256", (manifest.get("source") or {}).get("sha256") or "none (in memory)"],
    ]
    io_rows = [
        [kind, e["name"], e["dtype"], " x ".join(map(str, e["shape"]))]
        for kind in ("inputs", "outputs")
        for e in manifest.get(kind, [])
    ]
    limits = [
        [k, _count(v["max"]), v.get("reason", "")]
        for k, v in (manifest.get("dim_limits") or {}).items()
    ]
    parts = [_table(["", ""], rows), _table(["", "name", "dtype", "shape"], io_rows)]
    if limits:
        parts.append(_table(["symbolic dim", "at most", "why"], limits))
    return _section("artifact", "Artifact", *parts)


# --- helpers ----------------------------------------------------------------------------------


def short_names(names: Sequence[str]) -> list[str]:
    """Names without the path segments that all of them share at the front."""
    parts = [n.split("/") for n in names]
    common = 0
    if len(parts) > 1:
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
    return ["/".join(p[common:]) or n for p, n in zip(parts, names, strict=True)]


def _stats_cell(stats: Mapping[str, Any]) -> str:
    flat = [(k, v) for k, v in stats.items() if not isinstance(v, Mapping)]
    shown = ", ".join(f"{_e(k)} {_e(_value(v))}" for k, v in flat[:KEY_STATS])
    if len(flat) <= KEY_STATS:
        return shown
    rest = _table(["stat", "value"], [[k, _value(v)] for k, v in flat[KEY_STATS:]])
    return f"{shown}<details><summary>{len(flat) - KEY_STATS} more</summary>{rest}</details>"


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], raw: Sequence[int] = ()) -> str:
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(_cell(v, i in raw) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any, raw: bool) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = str(value) if raw else _e(_value(value) if numeric else value)
    return f'<td class="n">{text}</td>' if numeric else f"<td>{text}</td>"


def _figure(title: str, svg: str) -> str:
    return f'<figure class="plot"><figcaption>{_e(title)}</figcaption>{svg}</figure>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _target_text(manifest: Mapping[str, Any]) -> str:
    target = manifest.get("target") or {}
    cpu = (manifest.get("code") or {}).get("cpu")
    return f"{target.get('name', '?')} ({cpu})" if cpu else str(target.get("name", "?"))


def _layer_text(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "-"
    return f"{_bytes(entry['bytes'])} {entry['dtype']} ({_count(entry['parameters'])})"


def _size(layers: Mapping[str, Any], name: str) -> float:
    entry = layers.get(name)
    return float(entry["bytes"]) if entry else 0.0


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return _count(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _count(value: int) -> str:
    return f"{int(value):,}"


def _bytes(value: float) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{int(value)} B"


def _seconds(value: float) -> str:
    return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.2f} s"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
