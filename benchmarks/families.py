"""Every family of `nlpress.models.families` through every step: what is exact, valid or refused.

Each family is saved as a random-weight Hugging Face folder and given to nlpress as a user
gives a folder (exported once with torch.onnx, calibrated on the zoo's text with its
tokenizer). The steps:

- fold: `-p O1` in ONNX Runtime against the exported model, max abs diff on three sentences;
- x86: the `-p O1` artifact's model.so against its model.onnx (the build's own check);
- int8: `compile -p int8`: held-out mean cosine to the source, model.so against its model.onnx,
  and the artifact's bytes over the fp32 artifact's;
- neurons, heads: `prune-sparsify{pattern=neurons|heads sparsity=0.25}`, held-out cosine, or
  the one-line reason the pass refuses (or the units it skipped and why);
- factorize: `factorize-matmul` (param-ratio 0.5), held-out cosine.

Writes families.json into --out and the "families" section of benchmarks/RESULTS.md.

    python benchmarks/families.py [--family NAME ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import machine
import numpy as np

import nlpress
from nlpress.ir import NlpressError, load_model
from nlpress.ir.verify import run
from nlpress.models import zoo
from nlpress.models.families import FAMILIES, PRUNE_HEADS, PRUNE_NEURONS, write_folder
from nlpress.models.text import encode, load_tokenizer

log = logging.getLogger("benchmarks.families")
LOSSY = {
    "neurons": PRUNE_NEURONS,
    "heads": PRUNE_HEADS,
    "factorize": "fold,factorize-matmul,cleanup",
}
COLUMNS = ("fold", "x86", "int8", *LOSSY)
SENTENCES = ["def parse(x): return int(x)", "The driver panics on unload.", "u coming tonight?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--family", action="append", choices=list(FAMILIES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/families"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as work:
        rows = [measure(name, Path(work)) for name in args.family or FAMILIES]
    write({"rows": rows}, args)


def measure(name: str, work: Path) -> dict[str, Any]:
    """One family's cells, each {"ok": bool, "text": str, ...numbers}."""
    log.info("%s", name)
    folder = write_folder(name, work)
    source = zoo.cached_export(zoo.folder_entry(folder))
    row: dict[str, Any] = {"family": name}
    fp32 = nlpress.compile(str(folder), "x86", work / f"{name}-fp32")
    folded = load_model(fp32 / "model.onnx")
    texts = encode(load_tokenizer(str(folder / "tokenizer.json")), SENTENCES, 128)
    feeds = {t.name: texts[t.name] for t in folded.graph.inputs}
    exported, rewritten = run(load_model(source), feeds), run(folded, feeds)
    diff = max(float(np.max(np.abs(exported[k] - v))) for k, v in rewritten.items())
    row["fold"] = {"ok": diff <= 1e-4, "max_abs_diff": diff, "text": f"exact ({diff:.1e})"}
    row["x86"] = _artifact_cell(fp32)
    int8 = nlpress.compile(str(folder), "x86", work / f"{name}-int8", "int8")
    row["int8"] = _artifact_cell(int8, fp32)
    for step, pipeline in LOSSY.items():
        row[step] = _lossy_cell(str(folder), pipeline)
    return row


def _artifact_cell(artifact: Path, fp32: Path | None = None) -> dict[str, Any]:
    manifest = json.loads((artifact / "manifest.json").read_text())
    worst = float(manifest["fidelity"]["tvm_vs_onnxruntime"]["worst"])
    cosine = float(manifest["fidelity"]["heldout"]["mean_cosine"])
    if fp32 is None:
        return {"ok": worst <= 1e-4, "max_abs_diff": worst, "text": f"exact ({worst:.1e})"}
    share = _bytes(artifact) / _bytes(fp32)
    text = f"valid, cosine {cosine:.5f}, {share:.0%} of fp32 bytes"
    return {"ok": worst <= 1e-3, "cosine": cosine, "bytes_share": share, "text": text}


def _bytes(artifact: Path) -> int:
    return (artifact / "model.so").stat().st_size


def _lossy_cell(folder: str, pipeline: str) -> dict[str, Any]:
    try:
        result = nlpress.optimize(folder, pipeline)
    except NlpressError as exc:
        reason = str(exc).split(" (")[0]
        return {"ok": True, "refused": str(exc), "text": f"refused: {reason}"}
    stats = {k: v for record in result.records for k, v in record.stats.items()}
    skipped = {k: int(v) for k, v in stats.items() if k.startswith("skipped_") and v}
    why = ", ".join(f"{v} {k.removeprefix('skipped_')}" for k, v in skipped.items())
    if not any(record.changed for record in result.records[1:-1]):
        return {"ok": True, "skipped": skipped, "text": f"skipped ({why or 'nothing found'})"}
    cosine = result.heldout.mean_cosine if result.heldout else float("nan")
    note = f"; skipped {why}" if skipped else ""
    return {"ok": True, "cosine": cosine, "text": f"valid, cosine {cosine:.5f}{note}"}


def write(report: dict[str, Any], args: argparse.Namespace) -> None:
    """families.json (everything) and the RESULTS.md section (the table)."""
    lines = [
        "Random-weight folders (hidden 64, two layers) of transformers' own classes, compiled "
        "as a user's folder; cosines are held-out mean cosines to the exported model on the "
        "zoo's calibration text. Random weights are full rank and untrained: the cosines of "
        "the lossy steps say that they run and how much they change, not what a trained model "
        "keeps.",
        "",
        f"| family | {' | '.join(COLUMNS)} |",
        f"|---|{'---|' * len(COLUMNS)}",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['family']} | {' | '.join(row[c]['text'] for c in COLUMNS)} |")
    title = "Encoder families through every step"
    machine.publish(__file__, "families", title, report, args.out, lines)


if __name__ == "__main__":
    main()
