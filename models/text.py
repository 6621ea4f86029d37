"""The project's own text, and model feeds made from text with the model's tokenizer."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Tokenizer

from nlpress.ir import NlpressError, UsageError

Padding = Literal["longest", "max_length"]

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# Calibration text of at least MIN_HELDOUT_TEXT sentences is split: every HELDOUT_EVERY-th
# sentence is held out for scoring; a shorter text calibrates whole.
HELDOUT_EVERY = 5
MIN_HELDOUT_TEXT = 20

Pair = tuple[str, str]


def calibration_sentences() -> list[str]:
    """The calibration set: 1,299 sentences on many topics, disjoint from the evaluation set."""
    return _lines("calibration.txt")


def evaluation_pairs() -> list[tuple[str, str]]:
    """The evaluation set: paraphrase pairs (a, b), short and long."""
    pairs = []
    for line in _lines("eval_pairs.tsv"):
        a, b = line.split("\t")
        pairs.append((a, b))
    return pairs


def read_sentences(path: str | os.PathLike[str]) -> list[str]:
    """One sentence per non-empty line of a UTF-8 text file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NlpressError(f"{path}: cannot read sentences ({exc})") from exc
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        raise NlpressError(f"{path}: holds no sentences")
    return sentences


def split_heldout(sentences: Sequence[str]) -> tuple[list[str], list[str]]:
    """The calibration part and the held-out part of a calibration text.

    In a text of at least MIN_HELDOUT_TEXT sentences, sentence i (from 0) is held out when
    i % HELDOUT_EVERY == HELDOUT_EVERY - 1 (every fifth); a shorter text is all calibration. The
    split depends only on the order of the sentences.
    """
    if len(sentences) < MIN_HELDOUT_TEXT:
        return list(sentences), []
    held = [i % HELDOUT_EVERY == HELDOUT_EVERY - 1 for i in range(len(sentences))]
    calibration = [s for s, h in zip(sentences, held, strict=True) if not h]
    return calibration, [s for s, h in zip(sentences, held, strict=True) if h]


def read_eval_text(path: str | os.PathLike[str]) -> list[str] | list[Pair]:
    """Sentences, one per line, or pairs: two tab-separated sentences on every line.

    Empty lines are skipped; a file that mixes the two forms is refused, naming the line.
    """
    sentences = read_sentences(path)
    tabs = [line.count("\t") for line in sentences]
    if not any(tabs):
        return sentences
    pairs: list[Pair] = []
    for number, line in enumerate(sentences, start=1):
        a, _, b = line.partition("\t")
        if line.count("\t") != 1 or not a.strip() or not b.strip():
            raise NlpressError(
                f"{path}: non-empty line {number} is not two tab-separated sentences; give one "
                "sentence per line, or a pair on every line"
            )
        pairs.append((a.strip(), b.strip()))
    if len(pairs) < 2:
        raise NlpressError(f"{path}: one pair; retrieval needs at least two")
    return pairs


@cache
def load_tokenizer(path: str) -> Tokenizer:
    """A tokenizer from a tokenizer.json file."""
    try:
        return Tokenizer.from_file(path)
    except Exception as exc:
        raise UsageError(f"{path}: not a tokenizer.json file ({exc})") from exc


def token_counts(tokenizer: Tokenizer, texts: Sequence[str]) -> list[int]:
    """How many tokens each text has, special tokens included, before any cut."""
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return [len(e.ids) for e in tokenizer.encode_batch(list(texts))]


def encode(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    max_length: int = 128,
    padding: Padding = "longest",
) -> dict[str, np.ndarray]:
    """Tokenize a batch: input_ids, attention_mask and token_type_ids as int64 [batch, seq].

    Texts longer than `max_length` tokens are truncated; shorter ones are padded to the longest
    text of the batch or to `max_length`.
    """
    tokenizer.enable_truncation(max_length)
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    length = max_length if padding == "max_length" else None
    tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]", length=length)
    encodings = tokenizer.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def _lines(name: str) -> list[str]:
    data = resources.files("nlpress.models").joinpath("data", name)
    return [line for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
