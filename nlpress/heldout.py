"""Held-out fidelity: a rewritten model against its source on text calibration did not see.

A calibration text is split by `split_heldout`; the source and the rewritten model both run in
ONNX Runtime on the held-out sentences, and each sentence scores the cosine of the two models'
mean-pooled embedding outputs (`ir/embedding.py`, as `eval` scores sentences).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nlpress.ir import Model, NlpressError
from nlpress.ir.verify import first_line, session
from nlpress.models.feeds import static_dims
from nlpress.models.metrics import sentence_fidelity
from nlpress.models.text import MIN_HELDOUT_TEXT, load_tokenizer, split_heldout

ZOO_TEXT = "zoo calibration text"


@dataclass(frozen=True)
class HeldOutText:
    """The held-out sentences of a calibration text, and how to feed them.

    Attributes:
        name: What the text is: ZOO_TEXT, or the calibration file's name.
        sentences: The held-out sentences, in the text's order.
        tokenizer: A tokenizer.json path.
        max_length: The token count sentences are cut to where the model's sequence is symbolic.
    """

    name: str
    sentences: Sequence[str]
    tokenizer: str
    max_length: int


@dataclass(frozen=True)
class HeldOut:
    """Cosines of the rewritten model's sentence embeddings to the source's, per sentence.

    Attributes:
        text: What the held-out sentences came from.
        sentences: How many were scored.
        mean_cosine: The mean of the per-sentence cosines.
        min_cosine: The smallest of them.
        per_sentence: Each held-out sentence's cosine, in the text's order.
    """

    text: str
    sentences: int
    mean_cosine: float
    min_cosine: float
    per_sentence: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        """The manifest's `fidelity.heldout` entry."""
        return {
            "text": self.text,
            "sentences": self.sentences,
            "mean_cosine": self.mean_cosine,
            "min_cosine": self.min_cosine,
            "per_sentence": list(self.per_sentence),
        }

    def describe(self) -> str:
        """One line for the command line."""
        return (
            f"fidelity on {self.sentences} held-out sentences ({self.text}): mean cosine "
            f"{self.mean_cosine:.4f}, min {self.min_cosine:.4f}"
        )


def held_out(
    name: str, sentences: Sequence[str], model: Model, tokenizer: str | None, max_length: int
) -> tuple[HeldOutText | None, str | None]:
    """The held-out part of a calibration text for `model`, or None and why not, in one line."""
    held = split_heldout(sentences)[1]
    if not held:
        return None, (
            f"no held-out fidelity: {name} has {len(sentences)} sentences, fewer than "
            f"{MIN_HELDOUT_TEXT}: all calibrate"
        )
    if "input_ids" not in {t.name for t in model.graph.inputs}:
        return None, "no held-out fidelity: the model takes no input_ids"
    if tokenizer is None:
        return None, f"no held-out fidelity: {name} needs --tokenizer"
    return HeldOutText(name, held, tokenizer, max_length), None


def measure(
    source: Model, rewritten: Model, text: HeldOutText | None, note: str | None
) -> tuple[HeldOut | None, str | None]:
    """The rewritten model's held-out fidelity, or None and why not (`note` without text)."""
    if text is None:
        return None, note
    try:
        return score(source, rewritten, text), None
    except NlpressError as exc:
        return None, f"no held-out fidelity: {first_line(exc)}"


def score(source: Model, rewritten: Model, text: HeldOutText) -> HeldOut:
    """Run both models in ONNX Runtime on the held-out sentences and compare them.

    Sentences are cut to the rewritten model's static sequence length where it has one, else to
    `text.max_length`, the same for both models.

    Raises:
        NlpressError: A model cannot run on the sentences, or has no embedding output
            (`ir/embedding.py`), in one line.

    """
    candidate, reference = session(rewritten, optimize=True), session(source, optimize=True)
    length = static_dims(candidate)[1] or text.max_length
    tokenizer = load_tokenizer(text.tokenizer)
    try:
        found = sentence_fidelity(candidate, reference, tokenizer, text.sentences, length)
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise NlpressError(f"ONNX Runtime failed: {first_line(exc)}") from exc
    cosines = found.per_sentence
    return HeldOut(text.name, found.sentences, found.mean_cosine, found.min_cosine, cosines)
