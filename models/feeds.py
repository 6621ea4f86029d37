"""Calibration feeds: batches of model inputs made from text or read from an .npz file."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer

from nlpress.ir import NlpressError
from nlpress.models.text import encode

Feeds = Mapping[str, np.ndarray]

CALIBRATION_BATCH = 16


def batches_from_text(
    tokenizer: Tokenizer,
    sentences: Sequence[str],
    max_length: int = 128,
    static: tuple[int, int] | None = None,
) -> tuple[Feeds, ...]:
    """Tokenized batches of sentences, like lengths together.

    With `static` (batch, sequence), every batch has exactly that shape, for models whose
    shapes were fixed; otherwise batches of CALIBRATION_BATCH are padded to their longest text.
    """
    ordered = sorted(sentences, key=len)
    size = static[0] if static else CALIBRATION_BATCH
    batches = []
    for start in range(0, len(ordered), size):
        chunk = ordered[start : start + size]
        if static:
            chunk = chunk + [""] * (size - len(chunk))
            batches.append(encode(tokenizer, chunk, static[1], "max_length"))
        else:
            batches.append(encode(tokenizer, chunk, max_length, "longest"))
    return tuple(batches)


def batches_from_npz(
    path: str | os.PathLike[str], batch: int = CALIBRATION_BATCH
) -> tuple[Feeds, ...]:
    """Batches from an .npz of input arrays sharing their first (batch) axis."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise NlpressError(f"{path}: not a readable .npz of feeds ({exc})") from exc
    sizes = {a.shape[0] if a.ndim else None for a in arrays.values()}
    if not arrays or len(sizes) != 1 or None in sizes:
        raise NlpressError(f"{path}: feeds must be arrays sharing their first (batch) axis")
    total = sizes.pop() or 0
    return tuple(
        {name: a[start : start + batch] for name, a in arrays.items()}
        for start in range(0, total, batch)
    )
