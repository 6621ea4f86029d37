"""quantize-insert: MatMul(x, W) -> MatMul(DQ(Q(x)), DQ(W_q)), int8 weights, uint8 activations.

Quantized values follow the QDQ format (`ir.qdq`), which the lowering reads too. The run reads
as its steps:

1. layers (`layers`): every MatMul with a constant float weight (`ir.linear`), and with
   `attention` the batched MatMuls of two computed inputs; a Gemm is first rewritten as
   MatMul(x, alpha op(W)) followed by Add(beta C), so every quantized layer is a MatMul; the
   embedding tables read only by Gathers;
2. SmoothQuant (`smooth`), which leaves the float model unchanged;
3. static activation ranges from calibration histograms over real tokens (`quantize_ranges`);
4. the fidelity budget (`budget`), which keeps the most sensitive layers float;
5. the QDQ rewrite of the layers left (`writer`) and the stats (`stats`).

The bias Add after a MatMul stays float. Layers the budget kept float are recorded in the
model's metadata (`nlpress.quantize-insert.float`), so a second run keeps them float too and
changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.ir.graph import opset_version
from nlpress.ir.linear import by_input_or_weight
from nlpress.passes.base import Pass, PassResult, PreconditionError
from nlpress.passes.calibration import require_feeds
from nlpress.passes.compress.options import (
    budget_cosine_option,
    check_budget_cosine,
    check_exclude,
    check_include,
    exclude_option,
    include_option,
    selected,
)
from nlpress.passes.quantize_insert.budget import float_layers, predicted_count, sensitivity_batches
from nlpress.passes.quantize_insert.layers import (
    Layer,
    Table,
    as_matmul,
    candidates,
    collect,
    find_tables,
    gemm_as_matmul,
    has_qdq,
)
from nlpress.passes.quantize_insert.smooth import smooth_group
from nlpress.passes.quantize_insert.stats import FLOAT_KEY, recorded_float, size_stats
from nlpress.passes.quantize_insert.writer import Plan
from nlpress.passes.quantize_ranges import RANGE_METHODS, activation_range

__all__ = ["FLOAT_KEY", "QuantizeInsert", "predicted_count", "sensitivity_batches"]


MIN_OPSET = 13
Mode = Literal["static", "dynamic"]


@dataclass(frozen=True)
class QuantizeInsert(Pass):
    """Quantize MatMul/Gemm layers to int8 weights and uint8 activations with QDQ pairs.

    Options:
        mode: static (activation ranges from calibration) or dynamic (DynamicQuantizeLinear per
            tensor and call).
        calibration: How static ranges are chosen from calibration histograms: minmax,
            percentile, entropy (KL divergence) or mse (least quantization error).
        percentile: The percentile kept by calibration=percentile, in (50, 100].
        per-channel: Weight scales per output channel (true) or one per matrix (false).
        attention: Also quantize attention's batched MatMuls (both inputs computed).
        smooth: SmoothQuant migration strength alpha in [0, 1] (none: off); needs calibration
            data.
        embeddings: Also store the constant tables read by Gather (embeddings) as int8, one
            symmetric scale per row.
    """

    name: ClassVar[str] = "quantize-insert"
    tolerance: ClassVar[float | None] = None
    needs_calibration: ClassVar[bool] = True

    mode: Mode = "static"
    calibration: str = "mse"
    percentile: float = 99.99
    per_channel: bool = True
    attention: bool = False
    smooth: float | None = None
    include: tuple[str, ...] = include_option()
    exclude: tuple[str, ...] = exclude_option()
    embeddings: bool = True
    budget_cosine: float | None = budget_cosine_option()

    def __post_init__(self) -> None:
        if self.mode not in ("static", "dynamic"):
            raise ValueError(f"mode {self.mode!r}: expected static or dynamic")
        if self.calibration not in RANGE_METHODS:
            raise ValueError(
                f"calibration {self.calibration!r}: expected one of {', '.join(RANGE_METHODS)}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile {self.percentile}: expected 50 < percentile <= 100")
        if self.smooth is not None and not 0.0 <= self.smooth <= 1.0:
            raise ValueError(f"smooth {self.smooth}: expected an alpha in [0, 1]")
        check_budget_cosine(self.budget_cosine)
        check_include(self.include)
        check_exclude(self.name, self.exclude)

    @property
    def needs_data(self) -> bool:
        """Whether this configuration reads calibration data."""
        return self.mode == "static" or self.smooth is not None or self.budget_cosine is not None

    def requires(self, model: Model) -> None:
        """QDQ with axis needs opset 13, and something must be quantizable."""
        version = opset_version(model.graph) or 0
        if version < MIN_OPSET:
            raise PreconditionError(
                f"{self.name}: per-channel QuantizeLinear/DequantizeLinear need opset "
                f">= {MIN_OPSET}, the model has {version}; re-export it at a newer opset"
            )
        if (
            not candidates(model.graph, self.attention)
            and not self._tables(model.graph)
            and not has_qdq(model.graph)
        ):
            raise PreconditionError(
                f"{self.name}: the graph has no MatMul/Gemm with a constant 2-D float weight "
                "(nor a constant table read by Gather) to quantize"
            )

    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        """Quantize a copy of `model` (the teacher)."""
        feeds = require_feeds(data, self.name) if self.needs_data else ()
        work = model.copy()
        work.graph.toposort()
        recorded = recorded_float(model)
        layers, skipped = self._layers(work.graph, recorded)
        tables = self._tables(work.graph)
        if not layers and not tables:
            return PassResult(model.copy(), False, {**skipped, "layers_quantized": 0.0})
        smoothing = self._smooth(work, layers, feeds) if self.smooth is not None else {}
        ranges = self._ranges(work, layers, feeds) if self.mode == "static" else {}
        plan = Plan(self.mode, self.per_channel, work, layers, ranges, {}, tables)
        everything = frozenset(range(len(layers)))
        selected: frozenset[int] = everything
        budget: dict[str, float] = {}
        if self.budget_cosine is not None and layers:
            selected, budget = float_layers(self.budget_cosine, model, plan, feeds)
        if not selected and not tables:
            return PassResult(model.copy(), False, {**skipped, **budget, "layers_quantized": 0.0})
        out = plan.build(selected)
        kept = [layers[i].label for i in sorted(everything - selected)]
        if kept:
            metadata = {**out.metadata, FLOAT_KEY: json.dumps(sorted({*recorded, *kept}))}
            out = replace(out, metadata=metadata)
        stats = {**skipped, **smoothing, **budget, **size_stats(model, out, plan, selected)}
        return PassResult(out, True, stats)

    def _layers(
        self, graph: gs.Graph, recorded: Iterable[str]
    ) -> tuple[list[Layer], dict[str, float]]:
        """The layers to quantize (Gemms rewritten as MatMul + Add), and counts of the others."""
        recorded = set(recorded)
        layers: list[Layer] = []
        skipped = {"layers_excluded": 0.0, "layers_float_recorded": 0.0}
        for layer in candidates(graph, self.attention):
            reason = (
                "excluded"
                if not selected(self.include, self.exclude, layer.node)
                else "float_recorded"
                if layer.label in recorded
                else None
            )
            if reason is None:
                layers.append(layer)
            else:
                skipped[f"layers_{reason}"] += 1
                skipped[f"layer.{layer.label}.{reason}"] = 1.0
        for layer in layers:
            if layer.node.op == "Gemm":
                gemm_as_matmul(graph, layer.node)
        return [as_matmul(layer) for layer in layers], skipped

    def _tables(self, graph: gs.Graph) -> list[Table]:
        """The constant tables to store as int8 (none unless `embeddings`)."""
        if not self.embeddings:
            return []
        return [
            t
            for t in find_tables(graph)
            if all(selected(self.include, self.exclude, n) for n in t.readers)
        ]

    def _smooth(
        self, work: Model, layers: Sequence[Layer], feeds: Sequence[Feeds]
    ) -> dict[str, float]:
        """Apply SmoothQuant to every group of weight layers sharing an input or a weight."""
        groups = by_input_or_weight([layer for layer in layers if layer.weight is not None])
        inputs = {id(layer.activation): layer.activation for g in groups for layer in g}
        stats = collect(work, list(inputs.values()), feeds, channels=True)
        channel_max: dict[int, np.ndarray] = {}
        for key, tensor_stats in zip(inputs, stats, strict=True):
            assert tensor_stats.channel_max is not None
            channel_max[key] = tensor_stats.channel_max
        counts = {"smoothed_groups": 0.0, "smooth_folded": 0.0, "smooth_mul": 0.0}
        assert self.smooth is not None
        for group in groups:
            maxima = [channel_max[id(layer.activation)] for layer in group]
            for folded in smooth_group(work.graph, group, np.max(maxima, axis=0), self.smooth):
                counts["smooth_folded" if folded else "smooth_mul"] += 1
            counts["smoothed_groups"] += 1
        work.graph.toposort()
        return counts

    def _ranges(
        self, work: Model, layers: Sequence[Layer], feeds: Sequence[Feeds]
    ) -> dict[str, tuple[float, float]]:
        """The static range of every quantized activation, by tensor name."""
        tensors = {id(t): t for layer in layers for t in layer.inputs}
        stats = collect(work, list(tensors.values()), feeds, channels=False)
        return {
            t.name: activation_range(s.histogram, self.calibration, self.percentile)
            for t, s in zip(tensors.values(), stats, strict=True)
        }
