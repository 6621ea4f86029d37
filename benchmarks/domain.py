"""Calibration text from the user's domain: prune-sparsify calibrated on the zoo's text vs on it.

all-MiniLM-L6-v2 loses 25% of its FFN neurons (`prune-sparsify{pattern=neurons sparsity=0.25}`:
the activation criterion and the closed-form recovery, the pass's defaults) twice: calibrated on
the calibration part of the zoo's calibration text, and on the calibration part of a domain text
(--text, by default benchmarks/data/domain.txt: technical prose, code comments and chat lines
written for this benchmark). Both texts are split as nlpress splits calibration text
(`nlpress.models.text.split_heldout`: every fifth sentence held out). Each pruned model is
compared with the unpruned one in ONNX Runtime, per sentence the cosine of the mean-pooled
embeddings, on the domain's held-out sentences, on the zoo text's held-out sentences and on the
evaluation pairs. Writes domain.json into --out and the "domain" section of
benchmarks/RESULTS.md.

    python benchmarks/domain.py [--text FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import machine

import nlpress
from nlpress.compiler import Calibration
from nlpress.ir import load_model
from nlpress.ir.verify import session
from nlpress.models import zoo
from nlpress.models.metrics import Fidelity, fidelity, sentence_fidelity
from nlpress.models.text import calibration_sentences, load_tokenizer, read_sentences, split_heldout

log = logging.getLogger("benchmarks.domain")

MODEL = "minilm-l6"
PIPELINE = "prune-sparsify{pattern=neurons sparsity=0.25}"
DOMAIN_TEXT = Path(__file__).parent / "data" / "domain.txt"
COLUMNS = ("domain held-out", "zoo held-out", "evaluation pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--text", type=Path, default=DOMAIN_TEXT, help="the domain's sentences")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/domain"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    domain = split_heldout(read_sentences(args.text))
    general = split_heldout(calibration_sentences())
    sources = {
        "zoo calibration text": (Calibration(), len(general[0])),
        args.text.name: (Calibration(text=str(args.text)), len(domain[0])),
    }
    rows = [
        measure(label, calibration, count, domain[1], general[1])
        for label, (calibration, count) in sources.items()
    ]
    write({"model": MODEL, "pipeline": PIPELINE, "rows": rows}, args)


def measure(
    label: str,
    calibration: Calibration,
    count: int,
    domain_heldout: list[str],
    zoo_heldout: list[str],
) -> dict[str, Any]:
    """Prune calibrated on one text, then score the model on every held-out text."""
    entry = zoo.get(MODEL)
    tokenizer = load_tokenizer(str(entry.tokenizer()))
    reference = session(load_model(zoo.model_path(MODEL)), optimize=True)
    began = time.perf_counter()
    result = nlpress.optimize(MODEL, PIPELINE, calibration=calibration)
    seconds = time.perf_counter() - began
    log.info("calibrated on %s in %.0f s", label, seconds)
    pruned = session(result.model, optimize=True)
    scores = {
        "domain held-out": sentence_fidelity(
            pruned, reference, tokenizer, domain_heldout, entry.cut_length
        ),
        "zoo held-out": sentence_fidelity(
            pruned, reference, tokenizer, zoo_heldout, entry.cut_length
        ),
        "evaluation pairs": fidelity(pruned, reference, tokenizer, entry.cut_length),
    }
    return {
        "calibrated_on": label,
        "calibration_sentences": count,
        "optimize_seconds": round(seconds, 1),
        **{name: _summary(found) for name, found in scores.items()},
    }


def _summary(found: Fidelity) -> dict[str, float]:
    return {
        "sentences": found.sentences,
        "mean_cosine": found.mean_cosine,
        "min_cosine": found.min_cosine,
    }


def write(report: dict[str, Any], args: argparse.Namespace) -> None:
    """domain.json (everything) and the RESULTS.md section (the table)."""
    sizes = {name: report["rows"][0][name]["sentences"] for name in COLUMNS}
    lines = [
        f"{MODEL}, `{PIPELINE}`, calibrated on each text's calibration part; cosine of "
        "mean-pooled embeddings to the unpruned model in ONNX Runtime, mean (min), on "
        f"{sizes['domain held-out']} held-out sentences of the domain text, "
        f"{sizes['zoo held-out']} of the zoo's calibration text and the "
        f"{sizes['evaluation pairs']} sentences of the evaluation pairs.",
        "",
        "| calibrated on | calibration sentences | domain held-out | zoo held-out | "
        "evaluation pairs |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        cells = [f"{r[c]['mean_cosine']:.4f} ({r[c]['min_cosine']:.4f})" for c in COLUMNS]
        lines.append(
            f"| {r['calibrated_on']} | {r['calibration_sentences']} | {' | '.join(cells)} |"
        )
    title = "Calibration text from the user's domain"
    machine.publish(__file__, "domain", title, report, args.out, lines)


if __name__ == "__main__":
    main()
