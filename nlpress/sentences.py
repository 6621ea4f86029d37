"""Sentence encoders at compile time: the pool pass a build appends, and the manifest's "encoder".

An artifact of a text model records how `Session.encode` turns sentences into embeddings:

    "encoder": {"pooling": "mean", "normalize": true, "output": "sentence_embedding",
                "tokenizer": "tokenizer.json", "max_length": 512}

`pooling` and `output` are None when no pool pass ran (encode then mean-pools the embedding output,
`ir/embedding.py`, itself), `tokenizer` is None when the artifact carries none, and
`max_length` is the longest text in tokens the encoder takes (`zoo.text_length`): its static
sequence length, else the length its folder declares (at most its position table's), else the
largest its position table allows, else 128.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nlpress.ir import Model, UsageError
from nlpress.ir.interface import dim_limits
from nlpress.models import zoo
from nlpress.passes import Pipeline
from nlpress.passes.pool import MODES, OUTPUT, Pool

TOKENIZER_FILE = "tokenizer.json"


MODEL_POOLING = "model"  # --pooling model: as the model's own folder (or zoo entry) pools


def with_pooling(
    pipeline: Pipeline, pooling: str | None, normalize: bool, entry: zoo.ZooModel | None = None
) -> Pipeline:
    """The pipeline with `pool{mode=POOLING normalize=...}` appended when pooling is asked.

    `pooling` "model" is the pooling `entry` declares (a sentence-transformers folder's), with
    its normalization (or `normalize`).
    """
    if pooling == MODEL_POOLING:
        if entry is None or entry.pooling is None:
            raise UsageError(
                "--pooling model: the model declares no pooling (a sentence-transformers folder "
                "does); give mean or cls"
            )
        pooling, normalize = entry.pooling, entry.normalize or normalize
    if pooling is None:
        if normalize:
            raise UsageError("--normalize needs --pooling (mean, cls or model)")
        return pipeline
    if pooling not in MODES:
        raise UsageError(
            f"--pooling {pooling!r}: expected one of {', '.join((*MODES, MODEL_POOLING))}"
        )
    if any(isinstance(p, Pool) for p in pipeline):
        raise UsageError(f"--pooling, and the pipeline {pipeline} pools already: give one")
    return Pipeline((*pipeline.passes, Pool(mode=pooling, normalize=normalize)))  # type: ignore[arg-type]


def checked_tokenizer(path: str | None) -> Path | None:
    """A tokenizer.json file the artifact will carry, read once to refuse anything else."""
    if path is None:
        return None
    from nlpress.models.text import load_tokenizer

    load_tokenizer(path)
    return Path(path)


def encoder_entry(
    pipeline: Pipeline, model: Model, tokenizer: Path | None, entry: zoo.ZooModel | None
) -> dict[str, Any] | None:
    """The manifest's "encoder": how to pool and tokenize; None for a model of neither."""
    pool = next((p for p in reversed(pipeline.passes) if isinstance(p, Pool)), None)
    if pool is None and tokenizer is None:
        return None
    return {
        "pooling": pool.mode if pool else None,
        "normalize": bool(pool and pool.normalize),
        "output": OUTPUT if pool else None,
        "tokenizer": TOKENIZER_FILE if tokenizer else None,
        "max_length": longest_text(model, entry),
    }


def longest_text(model: Model, entry: zoo.ZooModel | None) -> int:
    """Tokens a text may have: the static sequence length, the model's limit, else the zoo's."""
    inputs = {t.name: t for t in model.graph.inputs}
    first = inputs.get("input_ids") or next(iter(inputs.values()), None)
    shape = list(first.shape or []) if first is not None else []
    dim = shape[1] if len(shape) > 1 else None
    limits = dim_limits(model.graph)
    limit = int(limits[dim].maximum) if isinstance(dim, str) and dim in limits else None
    return zoo.text_length(dim if isinstance(dim, int) else None, limit, entry)
