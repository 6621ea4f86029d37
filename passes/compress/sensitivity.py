"""How much the model's output loses when one unit is compressed alone.

A unit (a layer, an FFN, an attention block) is compressed in a copy of the teacher with
everything else left as it was; its loss is 1 - the pooled cosine (`calibration.pooled_cosine`)
between that copy's embedding output (`ir/embedding.py`) and
the teacher's on the calibration data. Allocation weighs units by it; budgets compare the whole
compressed model the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nlpress.ir import Feeds, Model
from nlpress.passes.calibration import embedding_outputs, output_cosine, pooled_cosine


@dataclass
class Fidelity:
    """The teacher's embedding outputs on the calibration data, computed once, to compare with."""

    teacher: Model
    feeds: Sequence[Feeds]
    _reference: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def reference(self) -> list[np.ndarray]:
        """The teacher's embedding output on each calibration batch."""
        if self._reference is None:
            self._reference = embedding_outputs(self.teacher, self.feeds)
        return self._reference

    def cosine(self, model: Model, batches: Sequence[int] | None = None) -> float:
        """The pooled cosine of `model`'s embedding output to the teacher's (on some batches)."""
        if batches is None:
            return output_cosine(model, self.reference, self.feeds)
        outputs = embedding_outputs(model, [self.feeds[i] for i in batches])
        return self.outputs_cosine(outputs, batches)

    def outputs_cosine(self, outputs: Sequence[np.ndarray], batches: Sequence[int]) -> float:
        """The pooled cosine of embedding outputs computed on `batches` to the teacher's there."""
        reference = [self.reference[i] for i in batches]
        return pooled_cosine(reference, outputs, [self.feeds[i] for i in batches])

    def loss(self, model: Model) -> float:
        """1 - `cosine`: what `model` (the teacher with some units compressed) loses."""
        return 1.0 - self.cosine(model)
