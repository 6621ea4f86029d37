"""Activation statistics on calibration data, shared by the passes that need data.

Calibration feeds are batches of input feeds, made by the front door from a zoo model's
calibration text, `--calibration-text` with `--tokenizer`, or `--calibration FEEDS.npz`; the
pipeline runner hands them to every pass's `run` as `data`. A pass that needs data reads the
activations of the tensors it cares about here, batch by batch, and reduces them as it likes;
the model it receives is its teacher.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.ir.embedding import embedding_of
from nlpress.ir.progress import steps
from nlpress.ir.verify import session
from nlpress.passes.base import PreconditionError

MASK = "attention_mask"  # the feed that marks real tokens (1) and padding (0)


def require_feeds(calibration: Sequence[Feeds], pass_name: str) -> Sequence[Feeds]:
    """The calibration batches, or a PreconditionError saying how to give some where none are."""
    if not calibration:
        raise PreconditionError(
            f"{pass_name} needs calibration data: use a zoo model, or give "
            "--calibration-text FILE with --tokenizer, or --calibration FEEDS.npz"
        )
    return calibration


def activations(
    model: Model, tensors: Sequence[gs.Tensor], feeds: Sequence[Feeds]
) -> Iterator[list[np.ndarray]]:
    """The values of `tensors` on each calibration batch, in the order asked, batch by batch."""
    proto = model.to_onnx()
    outputs = {o.name for o in proto.graph.output}
    names = [t.name for t in tensors]
    for name in dict.fromkeys(names):
        if name not in outputs:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = session(proto, optimize=True)
    wanted = {i.name for i in sess.get_inputs()}
    for batch in steps(feeds, "calibration batches"):
        values = sess.run(names, {k: v for k, v in batch.items() if k in wanted})
        yield [np.asarray(v) for v in values]


def as_rows(value: np.ndarray) -> np.ndarray:
    """An activation [..., k] as rows [n, k] in float64, for statistics over all positions."""
    return value.reshape(-1, value.shape[-1]).astype(np.float64)


def token_rows(value: np.ndarray, batch: Feeds) -> np.ndarray:
    """`as_rows(value)`, without the padding positions when the batch has an attention mask.

    An activation `[batch, sequence, ..., k]` whose leading dims match `attention_mask` keeps
    only the rows of real tokens; any other activation keeps every row.
    """
    rows = as_rows(value)
    mask = batch.get(MASK)
    if mask is None or value.ndim < 3 or tuple(value.shape[:2]) != tuple(np.shape(mask)):
        return rows
    per_row = int(np.prod(value.shape[2:-1], dtype=np.int64))
    keep = np.repeat(np.asarray(mask).reshape(-1) != 0, per_row)
    return np.asarray(rows[keep])


def truncated(model: Model, names: Sequence[str]) -> onnx.ModelProto:
    """The model cut down to what computes the tensors `names`, which become its outputs."""
    copy = model.copy()
    graph = copy.graph
    tensors = graph.tensors()
    outputs = [tensors[name] for name in dict.fromkeys(names)]
    for tensor in outputs:
        if tensor.dtype is None:
            tensor.dtype = np.float32
    graph.outputs = outputs
    graph.cleanup(remove_unused_graph_inputs=False)
    return copy.to_onnx()


def truncated_activations(
    model: Model, names: Sequence[str], feeds: Sequence[Feeds]
) -> Iterator[list[np.ndarray]]:
    """The tensors named `names` on each batch, the model cut down to what computes them."""
    sess = session(truncated(model, names), optimize=True)
    wanted = {i.name for i in sess.get_inputs()}
    for batch in steps(feeds, "calibration batches"):
        values = sess.run(list(names), {k: v for k, v in batch.items() if k in wanted})
        yield [np.asarray(v) for v in values]


def paired_activations(
    student: Model, teacher: Model, names: Sequence[str], feeds: Sequence[Feeds]
) -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
    """The tensors named `names` in a student and its teacher on each batch: (student, teacher).

    Both models are cut down to what computes those tensors (`truncated`), so a tensor early in
    the graph costs only the graph before it. For sequential recovery: the student is the model
    compressed so far, the teacher the model the pass received; tensor names are shared.
    """
    yield from zip(
        truncated_activations(student, names, feeds),
        truncated_activations(teacher, names, feeds),
        strict=True,
    )


def pooled_cosine(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], feeds: Sequence[Feeds]
) -> float:
    """Mean cosine of the mean-pooled (over real tokens) or flattened rows of two outputs.

    The budgets of the lossy passes compare sentence embeddings this way: `reference` and
    `candidate` hold one output per calibration batch of `feeds`.
    """
    cosines = []
    for ref, cand, batch in zip(reference, candidate, feeds, strict=True):
        a, b = _pooled(ref, batch), _pooled(cand, batch)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosines.append(np.sum(a * b, axis=1) / np.maximum(norms, 1e-30))
    return float(np.mean(np.concatenate(cosines))) if cosines else 1.0


def output_cosine(model: Model, reference: Sequence[np.ndarray], feeds: Sequence[Feeds]) -> float:
    """`pooled_cosine` of the model's embedding against `reference` (`embedding_outputs`)."""
    return pooled_cosine(reference, embedding_outputs(model, feeds), feeds)


def _pooled(value: np.ndarray, batch: Feeds) -> np.ndarray:
    value = np.asarray(value, np.float64)
    mask = batch.get(MASK)
    if value.ndim == 3 and mask is not None and tuple(np.shape(mask)) == value.shape[:2]:
        weights = np.asarray(mask, np.float64)[..., None]
        return np.asarray((value * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9))
    return value.reshape(value.shape[0], -1) if value.ndim else value.reshape(1, 1)


def embedding_outputs(model: Model, feeds: Sequence[Feeds]) -> list[np.ndarray]:
    """The model's embedding output on each batch, in ONNX Runtime with its graph optimizations.

    The embedding is the output `ir/embedding.py` chooses.
    """
    name = embedding_of(model).name
    sess = session(model, optimize=True)
    wanted = {i.name for i in sess.get_inputs()}
    return [
        np.asarray(sess.run([name], {k: v for k, v in batch.items() if k in wanted})[0])
        for batch in feeds
    ]
