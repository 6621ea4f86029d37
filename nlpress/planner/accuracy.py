"""The accuracy model: what each unit's cut and precision lose alone, and what they weigh.

Each part of a choice (a cut at float precision, or a precision at no cut) is applied to one
unit of the model with every other unit left as it is, by the same passes a plan runs; its loss
is 1 - the pooled output cosine to the model on the calibration batches
(`compress.sensitivity.Fidelity`), and its bytes the change in the saved model's size. A
choice's loss is the sum of its parts' (additivity, which `verify` checks on the whole plan); its
bytes scale the cut's bytes by the precision's ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nlpress.ir import Feeds, Model
from nlpress.ir.progress import steps
from nlpress.passes import parse, run_pipeline
from nlpress.passes.compress.sensitivity import Fidelity
from nlpress.planner import cache
from nlpress.planner.units import Choice, Unit, choices, pipeline_text


@dataclass(frozen=True)
class Part:
    """One part of a choice applied to one unit alone: its loss and its bytes."""

    loss: float
    bytes: int


@dataclass(frozen=True)
class Sensitivities:
    """Each unit's parts, measured against the model's own bytes and output."""

    parts: dict[tuple[str, Choice], Part]
    float_bytes: dict[str, int]

    def loss(self, unit: Unit, choice: Choice) -> float:
        """The predicted loss of `choice`: its cut's plus its precision's, each at least 0."""
        return sum(max(part.loss, 0.0) for part in self._parts(unit, choice))

    def bytes(self, unit: Unit, choice: Choice) -> float:
        """The predicted bytes of the unit's weights: the cut's, scaled by the precision's."""
        whole = self.float_bytes[unit.name]
        scaled = 1.0
        for part in self._parts(unit, choice):
            scaled *= part.bytes / whole if whole else 0.0
        return whole * scaled

    def _parts(self, unit: Unit, choice: Choice) -> list[Part]:
        wanted = [Choice(choice.cut)] if choice.cut else []
        if choice.precision != "float":
            wanted.append(Choice(0.0, choice.precision))
        return [self.parts[(unit.name, c)] for c in wanted]


def parts(unit: Unit) -> list[Choice]:
    """The choices measured for a unit: each cut at float, each precision uncut."""
    return [c for c in choices(unit) if (c.cut == 0.0) != (c.precision == "float")]


def measure(model: Model, units: Sequence[Unit], feeds: Sequence[Feeds]) -> Sensitivities:
    """Each unit's parts, one compressed copy of `model` each, scored on `feeds`.

    Parts measured before (the same pipeline text on the same model and batches, by the same
    passes and this module) are read back (`cache.py`).
    """
    fidelity = Fidelity(model, feeds)
    proto = model.to_onnx()
    size = int(proto.ByteSize())
    sources = cache.source_digest("nlpress.ir", "nlpress.passes") + cache.file_digest(__file__)
    name = "sensitivities-" + cache.digest(
        (proto.SerializeToString(), cache.feeds_digest(feeds), sources)
    )
    kept = cache.read(name)
    found: dict[tuple[str, Choice], Part] = {}
    todo = [(unit, choice) for unit in units for choice in parts(unit)]
    for unit, choice in steps(todo, "measure sensitivities"):
        text = pipeline_text({unit: choice}, head="", tail="")
        if text not in kept:
            compressed = run_pipeline(model, parse(text), (), feeds).model
            kept[text] = [fidelity.loss(compressed), model_bytes(compressed) - size]
            cache.write(name, kept)
        loss, change = kept[text]
        found[(unit.name, choice)] = Part(float(loss), weight_bytes(unit) + int(change))
    return Sensitivities(found, {unit.name: weight_bytes(unit) for unit in units})


def weight_bytes(unit: Unit) -> int:
    """The float32 bytes of a unit's weights (biases, small, left out)."""
    return sum(4 * k * n for k, n in unit.shapes)


def model_bytes(model: Model) -> int:
    """The size of the model saved as one ONNX file."""
    return int(model.to_onnx().ByteSize())
