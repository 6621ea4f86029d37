"""Feeds from text: calibration batches, a workload's batches, or read from an .npz file."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from tokenizers import Tokenizer

from nlpress.ir import Feeds, NlpressError, UsageError
from nlpress.models.text import encode


class Session(Protocol):
    """What ONNX Runtime's InferenceSession and nlpress's artifact sessions both offer."""

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, Any]) -> list[Any]:
        """Run the model on named feeds; outputs in order."""
        ...

    def get_inputs(self) -> Sequence[Any]:
        """The inputs, each with `name` and `shape`."""
        ...

    def get_outputs(self) -> Sequence[Any]:
        """The outputs, each with `name` and `shape`."""
        ...


def static_dims(session: Session) -> tuple[int | None, int | None]:
    """The static batch and sequence sizes of the first input, where fixed."""
    shape = list(session.get_inputs()[0].shape or [])
    dims = [d if isinstance(d, int) else None for d in shape[:2]] + [None, None]
    return dims[0], dims[1]


def text_feeds(
    session: Session, tokenizer: Tokenizer, texts: Sequence[str], max_length: int = 128
) -> dict[str, np.ndarray]:
    """Tokenized `texts` shaped as the session takes them.

    A static batch is filled up with empty texts and a static sequence length is padded to.
    All three BERT inputs are returned (the mask is needed for pooling); `inputs_of` keeps those
    the session takes.
    """
    batch, length = static_dims(session)
    texts = list(texts)
    if batch is not None:
        if len(texts) > batch:
            raise UsageError(f"the model takes batches of {batch}; got {len(texts)} texts")
        texts += [""] * (batch - len(texts))
    return encode(tokenizer, texts, length or max_length, "max_length" if length else "longest")


def inputs_of(session: Session, feeds: Feeds) -> dict[str, np.ndarray]:
    """The feeds that the session takes as inputs."""
    wanted = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in wanted}


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


def workload_batches(
    session: Session, tokenizer: Tokenizer, sentences: Sequence[str], batch: int, max_length: int
) -> list[dict[str, np.ndarray]]:
    """The sentences in their order, `batch` at a time, each batch padded to its longest one.

    Only the inputs the session takes are kept; texts longer than `max_length` tokens are cut.
    """
    return [
        inputs_of(session, encode(tokenizer, sentences[i : i + batch], max_length, "longest"))
        for i in range(0, len(sentences), batch)
    ]


def batches_from_npz(
    path: str | os.PathLike[str], static_batch: int | None = None
) -> tuple[Feeds, ...]:
    """Batches from an .npz of input arrays sharing their first (batch) axis.

    Batches hold CALIBRATION_BATCH rows, or exactly `static_batch` for a model whose batch size
    was fixed (the rows must then fill whole batches).
    """
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"PK":
                raise NlpressError(f"{path}: not an .npz archive of feeds (as numpy.savez writes)")
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise NlpressError(f"{path}: not a readable .npz of feeds ({exc})") from exc
    sizes = {a.shape[0] if a.ndim else None for a in arrays.values()}
    if not arrays or len(sizes) != 1 or None in sizes:
        raise NlpressError(f"{path}: feeds must be arrays sharing their first (batch) axis")
    total = sizes.pop() or 0
    if static_batch and total % static_batch:
        raise UsageError(
            f"{path}: {total} rows do not fill batches of {static_batch}, the model's static "
            "batch size"
        )
    batch = static_batch or CALIBRATION_BATCH
    return tuple(
        {name: a[start : start + batch] for name, a in arrays.items()}
        for start in range(0, total, batch)
    )
