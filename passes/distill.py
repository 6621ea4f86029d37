"""Distillation: train what compression rewrote until the student's output follows the teacher's.

Closed-form recovery (`recovery.py`) fits each compressed layer alone to the teacher's layer.
Distillation then trains every initializer the pass rewrote (the float weights and biases that
differ from the teacher's, or are new) end to end, through the whole graph (`TorchGraph`):

    loss = 1 - mean over sequences of cos(pool(s_out(x)), pool(t_out(x)))
           + w * mean over hidden states h of ||s_h(x) - t_h(x)||^2 / ||t_h(x)||^2

The first term compares the embedding output (`ir/embedding.py`)
mean-pooled over real tokens (attention mask 1), the sentence embedding that the lossy passes'
budgets compare (`calibration.pooled_cosine`). The second matches, token by token, every
LayerNormalization output that student and teacher share (a transformer block's hidden states), as
TinyBERT distils its layers: that keeps each block close to its teacher rather than only the end
result. Adam, with the learning rate decayed to zero along a cosine over the steps. Weights that
were exactly zero (pruned) stay zero: their gradient steps are masked out.

Data. A tenth of the calibration batches is held out; the weights with the lowest held-out
pooled loss (the first term) are kept, and the student comes back unchanged when no epoch beats
it. Trained on the other batches as they are, the student overfits them quickly, and
distillation needs no labels, so each training sequence is spliced instead: the first tokens of
one calibration sequence followed by the last tokens of another, cut at random places (every
input shaped like the attention mask is cut alike), and the teacher labels it on the fly.
Batches without an attention mask, or with padding that is not at the end, train as they are.

Static graphs carry their batch size in Reshape constants, so a step does not stack sequences
into one bigger batch: it maps the graph over several calibration batches (`TorchGraph.batched`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.ir.embedding import embedding_of
from nlpress.ir.progress import steps
from nlpress.passes.calibration import MASK
from nlpress.passes.torch_graph import Tensor, TorchGraph, require_torch

DEFAULT_LEARNING_RATE = 1e-4
HELD_OUT_SHARE = 0.1
STEP_BATCHES = 16  # calibration batches per optimizer step


@dataclass(frozen=True)
class DistillSettings:
    """How long and how fast to distill.

    Attributes:
        epochs: Passes over the training batches (0: no distillation).
        learning_rate: Adam's initial step size.
        seed: Seeds the held-out split, the splicing and the batch order.
        hidden_weight: The weight of the hidden-state term of the loss.
    """

    epochs: int
    learning_rate: float = DEFAULT_LEARNING_RATE
    seed: int = 0
    hidden_weight: float = 1.0


@dataclass(frozen=True)
class Distilled:
    """The distilled student and what it cost and bought.

    Attributes:
        model: The student with the best weights found (the input student if none was better).
        loss_before: The held-out loss of the student as it came.
        loss_after: The held-out loss of `model`.
        seconds: Wall time of the training.
    """

    model: Model
    loss_before: float
    loss_after: float
    seconds: float

    def stats(self) -> dict[str, float]:
        """The numbers for a pass's stats."""
        return {
            "distill_loss_before": self.loss_before,
            "distill_loss_after": self.loss_after,
            "distill_seconds": self.seconds,
        }


def distill(
    student: Model, teacher: Model, feeds: Sequence[Feeds], settings: DistillSettings
) -> Distilled:
    """Train the initializers in which `student` differs from `teacher` to follow the teacher."""
    require_torch("distillation")
    began = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    _torch().manual_seed(settings.seed)
    trainable = rewritten_initializers(student, teacher)
    outputs = [embedding_of(student).name, *hidden_states(student, teacher)]
    net = TorchGraph(student, trainable, outputs)
    reference = TorchGraph(teacher, (), outputs)
    train, held_out = _split(feeds, rng)
    held_groups = list(_groups(held_out))
    with _torch().no_grad():  # the teacher's held-out outputs do not change: computed once
        held_targets = [reference.batched(group)[0] for group in held_groups]
    best = start = _held_out_loss(net, held_groups, held_targets)
    if not trainable:  # nothing was rewritten
        return Distilled(student, start, start, time.perf_counter() - began)
    trainer = _Trainer(net, reference, settings, len(list(_groups(train))))
    best_weights: dict[str, np.ndarray] = {}
    for _ in steps(range(settings.epochs), "distillation epochs"):
        for group in _steps(train, rng):
            trainer.step([splice(batch, train, rng) for batch in group])
        loss = _held_out_loss(net, held_groups, held_targets)
        if loss < best:
            best, best_weights = loss, net.weights()
    model = with_weights(student, best_weights) if best_weights else student
    return Distilled(model, start, best, time.perf_counter() - began)


def rewritten_initializers(student: Model, teacher: Model) -> list[str]:
    """The float initializers of `student` that `teacher` lacks or holds with other values."""
    before = _constants(teacher)
    names = []
    for name, tensor in _constants(student).items():
        values = np.asarray(tensor.values)
        if values.dtype not in (np.float32, np.float64) or values.ndim == 0:
            continue
        old = before.get(name)
        if old is None or not np.array_equal(np.asarray(old.values), values):
            names.append(name)
    return names


def hidden_states(student: Model, teacher: Model) -> list[str]:
    """The LayerNormalization outputs that student and teacher share: the blocks' hidden states."""

    def normalized(model: Model) -> list[str]:
        return [n.outputs[0].name for n in model.graph.nodes if n.op == "LayerNormalization"]

    shared = set(normalized(teacher))
    return [name for name in normalized(student) if name in shared]


def with_weights(model: Model, weights: Mapping[str, np.ndarray]) -> Model:
    """A copy of `model` whose initializers named in `weights` hold those values.

    The copy's constants are its own objects (sharing arrays with `model`'s), so giving them new
    arrays leaves `model` as it was.
    """
    out = model.copy()
    for name, tensor in _constants(out).items():
        if name in weights:
            tensor.values = np.asarray(weights[name], np.asarray(tensor.values).dtype)
    return out


def splice(batch: Feeds, pool: Sequence[Feeds], rng: np.random.Generator) -> Feeds:
    """`batch` with each row's tail replaced by another calibration row's tail, cut at random.

    Row i keeps its first a tokens (a >= 1) and continues with the tokens from b on of a row of
    a random batch in `pool` to that row's last real token (b moved on where the result would
    not fit the sequence); every input shaped like the attention mask is cut the same way. A
    batch without an attention mask, or with padding that is not all at the end, is returned as
    it is.
    """
    donor = pool[int(rng.integers(len(pool)))]
    if not (_right_padded(batch) and _right_padded(donor)):
        return batch
    mask = np.asarray(batch[MASK])
    rows, length = mask.shape
    spliced = {k: np.array(v) for k, v in batch.items()}
    sequenced = [k for k, v in batch.items() if np.shape(v) == mask.shape]
    for row in range(rows):
        other = int(rng.integers(np.shape(donor[MASK])[0]))
        own_length = int(mask[row].sum())
        donor_length = int(np.asarray(donor[MASK])[other].sum())
        if own_length < 2 or donor_length < 2:
            continue
        cut = int(rng.integers(1, own_length))
        resume = max(int(rng.integers(1, donor_length)), donor_length - (length - cut))
        for name in sequenced:
            tail = donor[name][other, resume:donor_length]
            spliced[name][row] = 0
            spliced[name][row, : cut + len(tail)] = np.concatenate([batch[name][row, :cut], tail])
        spliced[MASK][row, : cut + donor_length - resume] = 1
    return spliced


class _Trainer:
    """Adam on the student's trainable initializers, with the loss against the teacher."""

    def __init__(
        self,
        net: TorchGraph,
        reference: TorchGraph,
        settings: DistillSettings,
        steps_per_epoch: int,
    ) -> None:
        self.net, self.reference = net, reference
        self.hidden_weight = settings.hidden_weight
        parameters = list(net.parameters.values())
        self.keep = [(p, (p != 0).to(p.dtype)) for p in parameters]
        self.optimizer = _torch().optim.Adam(parameters, lr=settings.learning_rate)
        total = max(1, settings.epochs * steps_per_epoch)
        self.schedule = _torch().optim.lr_scheduler.CosineAnnealingLR(self.optimizer, total)

    def step(self, group: Sequence[Feeds]) -> None:
        self.optimizer.zero_grad()
        with _torch().no_grad():
            targets = self.reference.batched(group)
        outputs = self.net.batched(group)
        loss = _pooled_loss(outputs[0], targets[0], group)
        if len(outputs) > 1 and self.hidden_weight:
            hidden = [
                _hidden_loss(o, t, group) for o, t in zip(outputs[1:], targets[1:], strict=True)
            ]
            loss = loss + self.hidden_weight * _torch().stack(hidden).mean()
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        with _torch().no_grad():
            for parameter, mask in self.keep:
                parameter.mul_(mask)


def _held_out_loss(
    net: TorchGraph, groups: Sequence[Sequence[Feeds]], targets: Sequence[Tensor]
) -> float:
    """The mean pooled-output loss of `net` against the teacher's `targets` (no gradient)."""
    total, count = 0.0, 0
    with _torch().no_grad():
        for group, target in zip(groups, targets, strict=True):
            total += float(_pooled_loss(net.batched(group)[0], target, group)) * len(group)
            count += len(group)
    return total / max(count, 1)


def _pooled_loss(output: Tensor, target: Tensor, group: Sequence[Feeds]) -> Tensor:
    """1 - the mean cosine of pooled rows, stacked over the group's batches (dim 0)."""
    student, teacher = _pooled(output, group), _pooled(target, group)
    return 1 - _torch().nn.functional.cosine_similarity(student, teacher, dim=-1).mean()


def _hidden_loss(output: Tensor, target: Tensor, group: Sequence[Feeds]) -> Tensor:
    """||student - teacher||^2 / ||teacher||^2 over the real tokens of a hidden state."""
    weights = _token_weights(output, group)
    if weights is None:
        weights = _torch().ones(())
    return (((output - target) ** 2) * weights).sum() / ((target**2) * weights).sum().clamp(
        min=1e-30
    )


def _token_weights(value: Tensor, group: Sequence[Feeds]) -> Tensor | None:
    """The group's attention masks shaped to broadcast over `value` [group, batch, sequence, ...].

    None when `value` is not laid out by the masks' [batch, sequence].
    """
    masks = [b.get(MASK) for b in group]
    shape = tuple(value.shape[1:3])
    if value.dim() < 4 or not all(m is not None and np.shape(m) == shape for m in masks):
        return None
    weights = _torch().from_numpy(np.stack([np.asarray(m) for m in masks])).to(value.dtype)
    return weights.reshape(*weights.shape, *([1] * (value.dim() - 3)))


def _pooled(value: Tensor, group: Sequence[Feeds]) -> Tensor:
    """Each batch's rows mean-pooled over real tokens ([group, batch, sequence, ...] outputs)."""
    weights = _token_weights(value, group)
    if weights is not None:
        pooled = (value * weights).sum(dim=2) / weights.sum(dim=2).clamp(min=1e-9)
        return pooled.reshape(-1, int(np.prod(pooled.shape[2:], dtype=np.int64)) or 1)
    return value.reshape(value.shape[0] * max(value.shape[1], 1), -1) if value.dim() > 1 else value


def _split(feeds: Sequence[Feeds], rng: np.random.Generator) -> tuple[list[Feeds], list[Feeds]]:
    """(training batches, held-out batches): a tenth held out, at least one of each."""
    if len(feeds) < 2:
        raise ValueError("distillation needs at least two calibration batches")
    order = rng.permutation(len(feeds))
    held = max(1, round(HELD_OUT_SHARE * len(feeds)))
    return [feeds[i] for i in order[held:]], [feeds[i] for i in order[:held]]


def _steps(feeds: Sequence[Feeds], rng: np.random.Generator) -> Iterator[list[Feeds]]:
    """The training batches in a random order, grouped for one optimizer step each."""
    yield from _groups([feeds[i] for i in rng.permutation(len(feeds))])


def _groups(feeds: Sequence[Feeds]) -> Iterator[list[Feeds]]:
    """Runs of up to STEP_BATCHES consecutive batches whose inputs have the same shapes."""
    group: list[Feeds] = []
    for batch in feeds:
        if group and (len(group) == STEP_BATCHES or _shapes(group[0]) != _shapes(batch)):
            yield group
            group = []
        group.append(batch)
    if group:
        yield group


def _shapes(batch: Feeds) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((k, np.shape(v)) for k, v in batch.items()))


def _right_padded(batch: Feeds) -> bool:
    """Whether the batch has an attention mask whose every row is ones, then only zeros."""
    mask = batch.get(MASK)
    if mask is None or np.ndim(mask) != 2:
        return False
    mask = np.asarray(mask) != 0
    lengths = mask.sum(axis=1)
    return bool(np.array_equal(mask, np.arange(mask.shape[1]) < lengths[:, None]))


def _constants(model: Model) -> dict[str, gs.Constant]:
    return {
        name: tensor
        for name, tensor in model.graph.tensors().items()
        if isinstance(tensor, gs.Constant)
    }


def _torch() -> Any:
    """PyTorch, imported on first use (`torch_graph.require_torch`)."""
    return require_torch("distillation")
