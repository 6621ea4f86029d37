"""Sentences in, embeddings out: tokenize, batch, pad, run and pool.

Like the runtime, this module needs only numpy (and the output rule of `ir/embedding.py`) at import;
`tokenizers` is imported when a tokenizer is first read. `encode` works on any session with ONNX
Runtime's shape of API (an artifact's, or ONNX Runtime's own); `Session.encode` calls it with the
artifact's tokenizer and manifest "encoder" entry.

Each batch is padded to its longest sentence where the sequence dim is symbolic, to the fixed
length where it is static (a static batch is filled up with empty sentences); sentences are
cut to `max_length` tokens. Sentences are batched by token count and the rows put back in the
order given. The embedding is the artifact's pooled output where it has one, else the embedding
output (`ir/embedding.py`) pooled here: mean
`sum_t(h_t * m_t) / max(sum_t(m_t), 1e-9)` over the attention mask m, or cls `h_0`;
L2-normalized as `e / max(||e||_2, 1e-12)` when asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from nlpress.ir.embedding import embedding_of

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_MAX_LENGTH = 128
COUNT_EPS = 1e-9
NORM_EPS = 1e-12


class EncodeError(ValueError):
    """Sentences or a model that cannot be encoded; the message says why."""


class Runnable(Protocol):
    """What an artifact session and ONNX Runtime's InferenceSession both offer."""

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, Any]) -> list[Any]:
        """Run the model on named feeds; outputs in order."""
        ...

    def get_inputs(self) -> Sequence[Any]:
        """The inputs, each with `name`, `shape` and a type."""
        ...

    def get_outputs(self) -> Sequence[Any]:
        """The outputs, each with `name` and `shape`."""
        ...


@dataclass(frozen=True)
class Encoder:
    """How a model's sentences become embeddings: an artifact manifest's "encoder" entry.

    Attributes:
        pooling: The pooling compiled into the graph ("mean" or "cls"), None for none.
        normalize: Whether the compiled pooling L2-normalizes.
        output: The output that holds the compiled pooling.
        tokenizer: The tokenizer file's name in the artifact folder.
        max_length: Tokens a sentence is cut to (None: the session's static or default length).

    """

    pooling: str | None = None
    normalize: bool = False
    output: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Encoder:
        """The manifest's "encoder" entry, or an empty one."""
        entry = manifest.get("encoder")
        if not isinstance(entry, Mapping):
            return cls()
        length = entry.get("max_length")
        return cls(
            pooling=_text(entry.get("pooling")),
            normalize=bool(entry.get("normalize")),
            output=_text(entry.get("output")),
            tokenizer=_text(entry.get("tokenizer")),
            max_length=length if isinstance(length, int) and length > 0 else None,
        )


@dataclass(frozen=True)
class Plan:
    """Where embeddings come from: an output, pooled in the graph or here, normalized or not.

    Attributes:
        output: The output read.
        in_graph: Whether that output is the graph's pooling, else token embeddings pooled here.
        pooling: "mean" or "cls".
        normalize: Whether the embeddings come out L2-normalized.
        normalize_here: Whether this module normalizes them (the graph did not).

    """

    output: str
    in_graph: bool
    pooling: str
    normalize: bool
    normalize_here: bool

    def describe(self) -> str:
        """One line naming the output and the pooling, e.g. for `nlpress run --text`."""
        norm = ", L2-normalized" if self.normalize else ""
        if self.in_graph:
            return f"output {self.output}: {self.pooling}-pooled{norm}, in the artifact's graph"
        where = " over the attention mask" if self.pooling == "mean" else ""
        return (
            f"output {self.output}: {self.pooling}-pooled{where}{norm} here, not in the graph "
            "(compile with --pooling mean to pool in the artifact)"
        )


def plan(session: Runnable, encoder: Encoder, normalize: bool | None = None) -> Plan:
    """The output to read and what to do with it; `normalize` None keeps the encoder's."""
    wanted = encoder.normalize if normalize is None else normalize
    names = [o.name for o in session.get_outputs()]
    pooled = encoder.output in names and encoder.pooling is not None
    if pooled and (wanted or not encoder.normalize):  # a normalized output cannot be undone
        here = wanted and not encoder.normalize
        return Plan(str(encoder.output), True, str(encoder.pooling), wanted, here)
    if not names:
        raise EncodeError("the model has no outputs to embed sentences with")
    tokens = embedding_of(session).name
    return Plan(tokens, False, encoder.pooling or "mean", wanted, wanted)


def encode(
    session: Runnable,
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    encoder: Encoder = Encoder(),
    batch_size: int = 32,
    normalize: bool | None = None,
    limits: Mapping[str, tuple[int, str]] | None = None,
) -> np.ndarray:
    """Embeddings of `sentences`, float32 [n, hidden], in the order given.

    Args:
        session: The model.
        tokenizer: A `tokenizers.Tokenizer`.
        sentences: A list of strings.
        encoder: The artifact's encoder entry (pooling, max_length).
        batch_size: Sentences per run, where the batch dim is symbolic.
        normalize: L2-normalize the embeddings; None: as the encoder's pooling does.
        limits: The largest sizes of symbolic dims ("sequence" 512), by dim name.

    Raises:
        EncodeError: Not a list of strings, a bad batch size, or a model that does not take
            token ids.

    """
    texts = _checked_sentences(sentences)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EncodeError(f"batch_size must be a positive int, not {batch_size!r}")
    how = plan(session, encoder, normalize)
    static_batch, static_length = static_dims(session)
    length = static_length or encoder.max_length or longest_text(session, limits or {})
    pad_id = pad_token_id(tokenizer)
    ids, types = tokenize(tokenizer, [*texts, ""], length)  # "" fills a static batch
    batch = static_batch or batch_size
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    rows: list[np.ndarray] = [np.empty(0, np.float32)] * len(texts)
    for start in range(0, len(order), batch):
        index = order[start : start + batch]
        real = len(index)
        index += [len(texts)] * (batch - real if static_batch else 0)
        chosen = [ids[i] for i in index], [types[i] for i in index]
        found = _embed(session, how, padded(*chosen, pad_id, static_length))
        for row, i in zip(found[:real], index[:real], strict=True):
            rows[i] = row
    if not texts:
        return np.zeros((0, _width(session, how)), np.float32)
    return np.stack(rows).astype(np.float32)


def _embed(session: Runnable, how: Plan, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """One batch's embeddings as the plan says."""
    [value] = session.run([how.output], _session_feeds(session, feeds))
    value = np.asarray(value)
    if not how.in_graph:
        value = pool(value, feeds["attention_mask"], how.pooling, how.output)
    return normalized(value) if how.normalize_here else value


def pool(tokens: np.ndarray, mask: np.ndarray, mode: str = "mean", output: str = "") -> np.ndarray:
    """Token embeddings [batch, sequence, hidden] pooled to [batch, hidden] (see the module).

    `output` names the model output the tokens came from, for the error.
    """
    if tokens.ndim != 3:
        named = f"embedding output {output}" if output else "output"
        raise EncodeError(
            f"the model's {named} has shape {list(tokens.shape)}; sentence embeddings "
            "need token embeddings [batch, sequence, hidden] (or an artifact compiled with "
            "--pooling)"
        )
    if mode == "cls":
        return np.asarray(tokens[:, 0], np.float32)
    weights = np.asarray(mask, np.float64)[..., None]
    summed = (tokens.astype(np.float64) * weights).sum(axis=1)
    return np.asarray(summed / np.maximum(weights.sum(axis=1), COUNT_EPS), np.float32)


def normalized(rows: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (at least 1e-12)."""
    norms = np.linalg.norm(rows.astype(np.float64), axis=-1, keepdims=True)
    return np.asarray(rows / np.maximum(norms, NORM_EPS), np.float32)


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[list[Any], list[Any]]:
    """Token ids and type ids of each text, cut to `max_length` tokens, unpadded.

    The tokenizer's own padding and truncation settings are put back afterwards.
    """
    padding, truncation = tokenizer.padding, tokenizer.truncation
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    try:
        encodings = tokenizer.encode_batch(list(texts))
    finally:
        tokenizer.no_truncation()
        if truncation:
            tokenizer.enable_truncation(**truncation)
        if padding:
            tokenizer.enable_padding(**padding)
    return [e.ids for e in encodings], [e.type_ids for e in encodings]


def padded(
    ids: Sequence[Sequence[int]],
    types: Sequence[Sequence[int]],
    pad_id: int = 0,
    length: int | None = None,
) -> dict[str, np.ndarray]:
    """input_ids, attention_mask and token_type_ids, int64 [batch, length or the longest]."""
    width = length or max((len(row) for row in ids), default=1)
    feeds = {
        "input_ids": np.full((len(ids), width), pad_id, np.int64),
        "attention_mask": np.zeros((len(ids), width), np.int64),
        "token_type_ids": np.zeros((len(ids), width), np.int64),
    }
    for row, (tokens, kinds) in enumerate(zip(ids, types, strict=True)):
        feeds["input_ids"][row, : len(tokens)] = tokens
        feeds["attention_mask"][row, : len(tokens)] = 1
        feeds["token_type_ids"][row, : len(kinds)] = kinds
    return feeds


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's padding id: its padding setting's, else [PAD]'s, else 0."""
    setting = tokenizer.padding
    if isinstance(setting, Mapping) and isinstance(setting.get("pad_id"), int):
        return int(setting["pad_id"])
    token = tokenizer.token_to_id("[PAD]")
    return int(token) if token is not None else 0


def static_dims(session: Runnable) -> tuple[int | None, int | None]:
    """The static batch and sequence sizes of the first input, where fixed."""
    shape = list(session.get_inputs()[0].shape or [])
    dims = [d if isinstance(d, int) else None for d in shape[:2]] + [None, None]
    return dims[0], dims[1]


def longest_text(session: Runnable, limits: Mapping[str, tuple[int, str]]) -> int:
    """The sequence length texts are cut to: static, else the dim's limit, else 128."""
    shape = list(session.get_inputs()[0].shape or [])
    dim = shape[1] if len(shape) > 1 else None
    if isinstance(dim, int):
        return dim
    if isinstance(dim, str) and dim in limits:
        return int(limits[dim][0])
    return DEFAULT_MAX_LENGTH


def load_tokenizer(path: str) -> Any:
    """A `tokenizers.Tokenizer` from a tokenizer.json file."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise EncodeError("encode needs the tokenizers package (pip install tokenizers)") from exc
    try:
        return Tokenizer.from_file(path)
    except Exception as exc:
        raise EncodeError(f"{path}: not a tokenizer.json file ({exc})") from exc


def _session_feeds(session: Runnable, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The text feeds the session takes, in its integer dtypes."""
    inputs = list(session.get_inputs())
    unknown = [i.name for i in inputs if i.name not in feeds]
    if unknown:
        raise EncodeError(
            f"the model takes {', '.join(unknown)}; encode feeds {', '.join(TEXT_INPUTS)} only"
        )
    return {i.name: feeds[i.name].astype(_dtype(i)) for i in inputs}


def _dtype(arg: Any) -> np.dtype[Any]:
    dtype = getattr(arg, "dtype", None) or str(arg.type)[len("tensor(") : -1]
    return np.dtype(dtype)


def _checked_sentences(sentences: Sequence[str]) -> list[str]:
    if isinstance(sentences, str):
        raise EncodeError("encode takes a list of sentences; put one sentence in a list")
    texts = list(sentences)
    wrong = next((t for t in texts if not isinstance(t, str)), None)
    if wrong is not None:
        raise EncodeError(f"encode takes strings; got {type(wrong).__name__}")
    return texts


def _width(session: Runnable, how: Plan) -> int:
    shape = next(o.shape for o in session.get_outputs() if o.name == how.output)
    last = shape[-1] if shape else None
    return last if isinstance(last, int) else 0


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
