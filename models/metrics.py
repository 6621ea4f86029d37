"""Fidelity of a candidate model against a reference on sentences or paraphrase pairs.

Sentence embeddings are mean-pooled token embeddings over the attention mask, L2-normalized, as
sentence-transformers computes them for all-MiniLM-L6-v2. The token embeddings are the model's
embedding output: the one the caller names, else the one `ir/embedding.py` chooses. An embedding
output that is already pooled ([batch, hidden]) is only normalized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from nlpress.ir import NlpressError
from nlpress.ir.embedding import embedding_of
from nlpress.models.feeds import Session, inputs_of, static_dims, text_feeds
from nlpress.models.text import evaluation_pairs

QUANTILES = (5, 25, 50)  # percentiles of the per-sentence cosines that a distribution reports
THRESHOLDS = (0.99, 0.95, 0.9)  # and the cosines whose share of sentences below it reports


@dataclass(frozen=True)
class Fidelity:
    """How closely a candidate's sentence embeddings follow a reference's.

    Attributes:
        mean_cosine: Mean cosine between candidate and reference embeddings of each sentence.
        min_cosine: The smallest of those cosines.
        recall_at_1: The candidate's paraphrase retrieval: the share of sentences whose nearest
            neighbour among the other side of the pairs is their own paraphrase (both directions);
            None for text without pairs.
        reference_recall_at_1: The same for the reference.
        spearman: Spearman correlation of the two models' pairwise similarity matrices; None for
            text without pairs.
        sentences: How many sentences were embedded.
        per_sentence: The cosine of each sentence, in the text's order (for pairs, every first
            sentence, then every second).
    """

    mean_cosine: float
    min_cosine: float
    recall_at_1: float | None
    reference_recall_at_1: float | None
    spearman: float | None
    sentences: int
    per_sentence: tuple[float, ...] = ()

    def scores(self) -> dict[str, float | int | None]:
        """The summary scores by name; None where the text has no pairs to score."""
        return {k: v for k, v in asdict(self).items() if k != "per_sentence"}

    def as_dict(self) -> dict[str, Any]:
        """The scores, the distribution of the cosines and the per-sentence cosines, for JSON."""
        return {
            **self.scores(),
            "distribution": distribution(self.per_sentence),
            "per_sentence": list(self.per_sentence),
        }


def distribution(cosines: Sequence[float]) -> dict[str, float]:
    """Quantiles of per-sentence cosines, and the share of sentences below a few thresholds."""
    if not len(cosines):
        return {}
    values = np.asarray(cosines, dtype=np.float64)
    quantiles = {f"p{q:02d}": float(np.quantile(values, q / 100)) for q in QUANTILES}
    below = {f"share_below_{t}": float(np.mean(values < t)) for t in THRESHOLDS}
    return {**quantiles, **below}


def sentence_embeddings(
    session: Session,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    max_length: int = 128,
    batch_size: int = 32,
    embedding: str | None = None,
) -> np.ndarray:
    """L2-normalized mean-pooled embeddings of the `embedding` output, one row per text.

    A session whose inputs have static batch or sequence dims is fed batches of exactly that
    shape (padded with empty texts and to the static length); the attention mask must be one of
    its inputs.
    """
    batch = static_dims(session)[0] or batch_size
    name = embedding_of(session, embedding).name
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of like lengths
    rows: dict[int, np.ndarray] = {}
    for start in range(0, len(texts), batch):
        index = order[start : start + batch]
        feeds = text_feeds(session, tokenizer, [texts[i] for i in index], max_length)
        [tokens] = session.run([name], inputs_of(session, feeds))
        pooled = mean_pool(np.asarray(tokens), feeds["attention_mask"], name)
        rows.update(zip(index, pooled, strict=False))
    return np.stack([rows[i] for i in range(len(texts))])


def paired_embeddings(
    candidate: Session,
    reference: Session,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    max_length: int = 128,
    embedding: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Both models' embeddings of `texts`, refused before any text runs when their widths differ.

    `embedding` names the output to read in both; by default each model's own (`embedding_of`).
    """
    widths = (output_width(s, tokenizer, embedding) for s in (candidate, reference))
    _same_widths(*widths)
    cand = sentence_embeddings(candidate, tokenizer, texts, max_length, embedding=embedding)
    ref = sentence_embeddings(reference, tokenizer, texts, max_length, embedding=embedding)
    _same_widths(cand.shape[1], ref.shape[1])
    return cand, ref


def output_width(session: Session, tokenizer: Tokenizer, embedding: str | None = None) -> int:
    """The embedding output's width: declared as [batch, (sequence,) W], else one text's."""
    shape = list(embedding_of(session, embedding).shape or [])
    if len(shape) in (2, 3) and isinstance(shape[-1], int):
        return shape[-1]
    return int(sentence_embeddings(session, tokenizer, [""], embedding=embedding).shape[1])


def _same_widths(candidate: int, reference: int) -> None:
    """Refuse embeddings of two widths: such models do not embed into one space."""
    if candidate != reference:
        raise NlpressError(
            f"the candidate's embeddings have width {candidate} and the reference's "
            f"{reference}: compare a model with its own compressed versions"
        )


def sentence_fidelity(
    candidate: Session,
    reference: Session,
    tokenizer: Tokenizer,
    sentences: Sequence[str],
    max_length: int = 128,
    embedding: str | None = None,
) -> Fidelity:
    """Compare two models on sentences: the cosine of each sentence's two embeddings."""
    cand, ref = paired_embeddings(candidate, reference, tokenizer, sentences, max_length, embedding)
    return _scored(np.sum(cand * ref, axis=1), None)


def fidelity(
    candidate: Session,
    reference: Session,
    tokenizer: Tokenizer,
    max_length: int = 128,
    pairs: Sequence[tuple[str, str]] | None = None,
    embedding: str | None = None,
) -> Fidelity:
    """Compare two models on paraphrase pairs (the evaluation pairs unless given)."""
    pairs = evaluation_pairs() if pairs is None else pairs
    texts = [a for a, _ in pairs] + [b for _, b in pairs]
    cand, ref = paired_embeddings(candidate, reference, tokenizer, texts, max_length, embedding)
    retrieval = (
        recall_at_1(cand, len(pairs)),
        recall_at_1(ref, len(pairs)),
        spearman(cand @ cand.T, ref @ ref.T),
    )
    return _scored(np.sum(cand * ref, axis=1), retrieval)


def _scored(cosines: np.ndarray, retrieval: tuple[float, float, float] | None) -> Fidelity:
    """A Fidelity from per-sentence cosines and, for pairs, recall@1 of both and Spearman."""
    recall, reference_recall, rank = retrieval or (None, None, None)
    return Fidelity(
        mean_cosine=float(np.mean(cosines)),
        min_cosine=float(np.min(cosines)),
        recall_at_1=recall,
        reference_recall_at_1=reference_recall,
        spearman=rank,
        sentences=len(cosines),
        per_sentence=tuple(float(c) for c in cosines),
    )


def recall_at_1(embeddings: np.ndarray, pairs: int) -> float:
    """Paraphrase retrieval over rows [a_0..a_n-1, b_0..b_n-1], both directions averaged."""
    a, b = embeddings[:pairs], embeddings[pairs:]
    similarity = a @ b.T
    truth = np.arange(pairs)
    forward = np.mean(np.argmax(similarity, axis=1) == truth)
    backward = np.mean(np.argmax(similarity, axis=0) == truth)
    return float((forward + backward) / 2)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of the upper triangles of two square matrices."""
    upper = np.triu_indices(x.shape[0], k=1)
    rx, ry = _ranks(x[upper]), _ranks(y[upper])
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks, ties sharing the mean of their positions."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end - 1) / 2
    return ranks


def mean_pool(tokens: np.ndarray, mask: np.ndarray, output: str = "") -> np.ndarray:
    """L2-normalized mean of the token embeddings over the attention mask, one row per sentence.

    Embeddings pooled already ([batch, hidden]) are only normalized. `output` names the model
    output the tokens came from, for the error.
    """
    if tokens.ndim == 2:
        pooled = tokens.astype(np.float64)
    elif tokens.ndim == 3:
        weights = mask[..., None].astype(np.float64)
        summed = (tokens.astype(np.float64) * weights).sum(axis=1)
        pooled = summed / np.maximum(weights.sum(1), 1e-9)
    else:
        raise NlpressError(
            f"the model's {f'embedding output {output}' if output else 'output'} has shape "
            f"{list(tokens.shape)}; sentence embeddings need token embeddings "
            "[batch, sequence, hidden] or pooled ones [batch, hidden]"
        )
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    normalized: np.ndarray = pooled / np.maximum(norms, 1e-12)
    return normalized
