"""Writing an artifact folder: model.so, model.onnx, manifest.json, report.json, report.html.

Everything is built in a private folder beside the output and renamed into place at the end, so
a failed build leaves no half-written artifact (and an older artifact at the same path stays
until the new one is complete).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nlpress.ir import Model, UsageError, embedding, save_model
from nlpress.ir.interface import dim_limits, input_entries, value_entry
from nlpress.ir.progress import step
from nlpress.ir.staging import replace_dir, staging_dir, umask
from nlpress.ir.verify import make_feeds, run
from nlpress.targets import isa, lower
from nlpress.targets.report_html import write_report
from nlpress.targets.runtime import (
    FORMAT_VERSION,
    LIBRARY,
    MANIFEST,
    Session,
    library_facts,
    read_manifest,
)
from nlpress.targets.target import Target

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
REPORT = "report.json"
REPORT_HTML = "report.html"

# Symbolic dims take these sizes in the fidelity check the build runs on the host.
FIDELITY_DIM = 8
FIDELITY_BATCH = 2


def build_artifact(
    model: Model,
    target: Target,
    out_dir: Path,
    *,
    manifest: Mapping[str, Any],
    files: Mapping[str, Path] | None = None,
    records: str | os.PathLike[str] | None = None,
    version: str = "unknown",
) -> Path:
    """Lower an optimized model (fold already run) and write its artifact folder atomically.

    Args:
        model: The model after the pipeline; its input dims may be static or symbolic.
        target: From `get_target`.
        out_dir: The artifact folder; an existing artifact there is replaced, any other
            non-empty folder is refused.
        manifest: The caller's fields (pipeline text, source sha256, pass stats, ...), merged
            under the lowering's own.
        files: Files the artifact carries besides its own (e.g. "tokenizer.json"), by their
            name in the folder; each is copied in and listed in the manifest's "files" by stem.
        records: A MetaSchedule tuning-records folder whose schedules the CPU build reuses.
        version: The nlpress version the manifest records.

    Returns:
        `out_dir`.

    Raises:
        LoweringError: TVM could not import or build the model.
        UsageError: `out_dir` is a non-empty folder that is not an artifact.

    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    began = time.perf_counter()
    with _staging(out_dir) as staging:
        timings, facts = _lower(model, target, staging, records)
        save_model(model, staging / ONNX_FILE)
        for name, source in (files or {}).items():
            shutil.copyfile(source, staging / name)
        fields = _manifest(model, target, manifest, facts, version)
        fields["files"].update({Path(name).stem: name for name in files or {}})
        fields["library"] = library_facts(staging / LIBRARY)
        if "sizes" in fields:
            fields["sizes"] = {**fields["sizes"], "library_bytes": fields["library"]["bytes"]}
        fields["build_seconds"] = round(time.perf_counter() - began, 3)
        _write_json(staging / MANIFEST, fields)
        with step("checking model.so against ONNX Runtime"):
            fidelity, kernels = _fidelity(model, target, staging)
        fields["fidelity"] = {**dict(manifest.get("fidelity", {})), "tvm_vs_onnxruntime": fidelity}
        _write_json(staging / MANIFEST, fields)
        report = {**_report(model, target, fields, timings, staging), "kernels": kernels}
        _write_json(staging / REPORT, report)
        write_report(staging / REPORT_HTML, fields, report)
        _replace(staging, out_dir)
    log.info("wrote %s (%s) in %.1f s", out_dir, target.name, time.perf_counter() - began)
    return out_dir


def _lower(
    model: Model, target: Target, staging: Path, records: str | os.PathLike[str] | None
) -> tuple[dict[str, float], dict[str, Any]]:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    with step("lowering: import into TVM Relax"):
        mod = lower.import_onnx(model.to_onnx())
    timings["import_seconds"] = time.perf_counter() - clock
    clock = time.perf_counter()
    with step("lowering: schedule the kernels"):
        executable = lower.build(mod, target, records)
    timings["build_seconds"] = time.perf_counter() - clock
    clock = time.perf_counter()
    with step("lowering: generate code and link model.so"):
        facts = lower.export(executable, target, staging / LIBRARY, staging / ".work")
    shutil.rmtree(staging / ".work", ignore_errors=True)
    timings["export_seconds"] = time.perf_counter() - clock
    return {k: round(v, 3) for k, v in timings.items()}, facts


def _manifest(
    model: Model,
    target: Target,
    caller: Mapping[str, Any],
    facts: Mapping[str, Any],
    version: str,
) -> dict[str, Any]:
    import tvm

    proto = model.to_onnx()
    outputs = [value_entry(v) for v in proto.graph.output]
    fields: dict[str, Any] = dict(caller)
    fields.update(
        {
            "format_version": FORMAT_VERSION,
            "nlpress_version": version,
            "tvm_version": str(tvm.__version__),
            "target": target.describe(),
            "code": isa.kernel_facts(lower.tvm_target(target)),
            "inputs": input_entries(proto),
            "outputs": outputs,
            "metadata": embedding.recorded(model.metadata, outputs),
            "dim_limits": {k: v.as_dict() for k, v in dim_limits(model.graph).items()},
            "files": {
                "library": LIBRARY,
                "onnx": ONNX_FILE,
                "report": REPORT,
                "report_html": REPORT_HTML,
            },
        }
    )
    if facts:
        fields.update(facts)
    return fields


def _fidelity(model: Model, target: Target, staging: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the built library against ONNX Runtime on seeded feeds, where this host can.

    Returns:
        The comparison, and the latency by kernel of one more run on the same feeds.

    """
    if not target.runs_on_host:
        reason = f"the {target.name} library does not run on this host"
        return {"checked": False, "reason": reason}, {"measured": False, "reason": reason}
    manifest = read_manifest(staging)
    sizes = _fidelity_sizes(manifest["inputs"])
    feeds = make_feeds(model, dims=sizes, seed=0)
    expected = run(model, feeds)
    session = Session(staging)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    diffs = {name: _max_abs_diff(want, got[name]) for name, want in expected.items()}
    kernels = {"measured": True, "dims": sizes, **session.kernel_times(feeds)}
    found = {"checked": True, "dims": sizes, "max_abs_diff": diffs, "worst": max(diffs.values())}
    return found, kernels


def _max_abs_diff(want: np.ndarray, got: np.ndarray) -> float:
    if want.shape != got.shape:
        return float("inf")
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64))))


def _fidelity_sizes(inputs: list[Mapping[str, Any]]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for entry in inputs:
        for axis, dim in enumerate(entry["shape"]):
            if isinstance(dim, str):
                sizes.setdefault(dim, FIDELITY_BATCH if axis == 0 else FIDELITY_DIM)
    return sizes


def _report(
    model: Model,
    target: Target,
    manifest: Mapping[str, Any],
    timings: Mapping[str, float],
    staging: Path,
) -> dict[str, Any]:
    ops = collections.Counter(node.op for node in model.graph.nodes)
    return {
        "target": target.name,
        "timings": dict(timings),
        "library_bytes": (staging / LIBRARY).stat().st_size,
        "onnx_nodes": sum(ops.values()),
        "onnx_ops": dict(sorted(ops.items())),
        "fidelity": manifest.get("fidelity", {}),
        "device_code": manifest.get("device_code"),
        "pipeline": manifest.get("pipeline"),
    }


def check_replaceable(out_dir: Path) -> None:
    """Refuse an output that is a file, or a non-empty folder that is not an artifact."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise UsageError(f"{out_dir}: a non-empty folder that is not an nlpress artifact")


def _staging(out_dir: Path) -> contextlib.AbstractContextManager[Path]:
    return staging_dir(out_dir)


def _replace(staging: Path, out_dir: Path) -> None:
    """Rename the staged folder to `out_dir`, moving an older artifact aside first."""
    _apply_umask(staging)
    replace_dir(staging, out_dir)


def _apply_umask(staging: Path) -> None:
    """Give the staged folder and files the modes a plain mkdir and open would have."""
    mask = umask()
    staging.chmod(0o777 & ~mask)
    for path in staging.iterdir():
        path.chmod((0o777 if path.suffix == ".so" else 0o666) & ~mask)


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return os.fspath(value)
    return str(value)
