"""The distillation stage of a lossy pass, with its options defined once.

After a pass's closed-form steps, `distill_stage` trains what the pass rewrote end to end so
that the student's output follows the teacher's (`passes/distill.py` has the loss). A pass
declares the stage's options with `distill_epochs_option()` and `distill_lr_option()`; their
help comes from the fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field
from typing import Any

from nlpress.ir import Feeds, Model
from nlpress.passes.distill import DEFAULT_LEARNING_RATE, DistillSettings, distill
from nlpress.passes.torch_graph import require_torch

EPOCHS_HELP = (
    "Train the rewritten weights end to end for this many epochs so that the pooled output "
    "follows the input model's (needs PyTorch); 0 skips it."
)
LR_HELP = "Distillation's initial learning rate (Adam, cosine decay), > 0."


def distill_epochs_option() -> Any:
    """The `distill-epochs` option field: epochs of end-to-end training (default 0, off)."""
    return field(default=0, metadata={"help": EPOCHS_HELP})


def distill_lr_option() -> Any:
    """The `distill-lr` option field: the initial learning rate."""
    return field(default=DEFAULT_LEARNING_RATE, metadata={"help": LR_HELP})


def check_distill_options(epochs: int, learning_rate: float) -> None:
    """Raise ValueError for a negative epoch count or a learning rate that is not positive."""
    if epochs < 0:
        raise ValueError(f"distill-epochs {epochs}: expected >= 0")
    if not learning_rate > 0:
        raise ValueError(f"distill-lr {learning_rate}: expected > 0")


def require_distill(pass_name: str, epochs: int) -> None:
    """Raise PreconditionError when distillation is asked for and PyTorch is missing."""
    if epochs:
        require_torch(f"{pass_name}{{distill-epochs}}")


def distill_stage(
    student: Model,
    teacher: Model,
    feeds: Sequence[Feeds],
    epochs: int,
    learning_rate: float,
) -> tuple[Model, dict[str, float]]:
    """The distilled student and the stage's stats (the student as it is when epochs is 0)."""
    if not epochs:
        return student, {}
    distilled = distill(student, teacher, feeds, DistillSettings(epochs, learning_rate))
    return distilled.model, distilled.stats()
