"""quantize-insert: MatMul(x, W) -> MatMul(DQ(Q(x)), DQ(W_q)), int8 weights, uint8 activations.

The QDQ format (the lowering relies on exactly this):

- Weight W [k, n] of MatMul(x, W) (an initializer, the second input): an int8 initializer
  W_q [k, n] and DequantizeLinear(W_q, scale, zero_point, axis=1), scale float32 [n] (per output
  channel, the default) or a scalar (`per-channel=false`), zero_point int8 zeros of the scale's
  shape. Symmetric: scale = max|W[:, j]| / 127, values rounded half to even and clipped to
  [-127, 127]. A Gemm (transA=0) is first rewritten as MatMul(x, alpha W or alpha W^T) followed
  by Add(beta C) when it has a bias, so every quantized layer is a MatMul.
- Static activations (`mode=static`): x -> QuantizeLinear(x, s, zp) -> DequantizeLinear(q, s, zp)
  -> MatMul input 0, s a float32 scalar, zp a uint8 scalar (asymmetric uint8, as ONNX Runtime's
  default and x86 VNNI's u8 x s8). One Q/DQ pair serves every MatMul reading the same tensor
  (Q, K and V share one).
- Dynamic activations (`mode=dynamic`): x -> DynamicQuantizeLinear(x) -> (y uint8, y_scale,
  y_zero_point) -> DequantizeLinear(y, y_scale, y_zero_point) -> MatMul input 0: per tensor and
  per call (per-row dynamic quantization is not expressible in plain QDQ).
- The bias Add after a MatMul stays float, untouched.
- Embedding tables (`embeddings=true`, the default): a constant float table T [rows, d] read
  only by Gathers on axis 0 (word, position and token-type embeddings) becomes an int8
  initializer T_q [rows, d] and DequantizeLinear(T_q, scale, zero_point, axis=0) feeding those
  Gathers, scale float32 [rows] (one per row: each token's vector keeps its own range),
  zero_point int8 zeros [rows], symmetric and rounded as the weights. Tables are always
  quantized (the budget below does not keep them float, but it measures the model with them).
- Attention's batched MatMuls (`attention=true`; both inputs computed): input 0 as a static
  activation above (uint8 asymmetric); input 1 int8 symmetric, QuantizeLinear(x, s, 0) ->
  DequantizeLinear, s = max|x| / 127 a float32 scalar and an int8 zero point 0 (u8 x s8 like the
  weights). With `mode=dynamic` both inputs go through DynamicQuantizeLinear (uint8 x uint8).

Activation ranges come from calibration on token rows, padding excluded (`quantize_ranges`:
minmax, percentile, entropy, mse).

SmoothQuant (`smooth=ALPHA`): for the layers reading one tensor x, s_j = max|x_j|^alpha /
max|W_j|^(1 - alpha) (W_j: row j of every layer's weight), x becomes x / s and each weight
diag(s) W, which leaves the float model unchanged and moves range from the activation into the
per-channel-quantized weights. The division is folded into x's producer when it is a
LayerNormalization with constant scale and bias (both divided by s) or a Mul by a constant (the
constant divided by s); other readers of x (e.g. a residual Add) then read x * s through an
inserted Mul. Otherwise a Mul(x, 1 / s) is inserted before the quantized layers.

Fidelity budget (`budget-cosine=c`): the cosine between the quantized and the input model's first
output (mean-pooled over real tokens, as sentence embeddings are) is measured on the calibration
data (in ONNX Runtime, with its QDQ fusions). Below c, each quantized layer's sensitivity is
measured on calibration batches holding about 64 sequences, spread over the set (how much the
cosine rises when that layer alone stays float), and the most sensitive layers stay float: as
many as the summed sensitivities predict, then one more or one fewer at a time, until the least
count that meets c on all of the calibration data is found. Their names are recorded in the
model's metadata (`nlpress.quantize-insert.float`), so a second run keeps them float too and
changes nothing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Model
from nlpress.ir.graph import (
    fresh_name,
    fresh_node_name,
    is_graph_output,
    opset_version,
    producer,
    weighted_matmuls,
)
from nlpress.ir.progress import steps
from nlpress.passes.base import Pass, PassResult, PreconditionError
from nlpress.passes.calibration import (
    Feeds,
    activations,
    first_outputs,
    pooled_cosine,
    require_feeds,
    token_rows,
)
from nlpress.passes.quantize_ranges import (
    TensorStats,
    activation_range,
    int8_scale,
    quantize_rows,
    quantize_weight,
    smooth_factors,
    uint8_params,
)

log = logging.getLogger(__name__)

FLOAT_KEY = "nlpress.quantize-insert.float"
MIN_OPSET = 13
Mode = Literal["static", "dynamic"]
Method = Literal["minmax", "percentile", "entropy", "mse"]
_QDQ = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
# Layer sensitivities for the budget are measured on calibration batches holding about this
# many sequences, spread over the set (4 batches of 16, or 64 of one at a static batch of 1).
SENSITIVITY_ROWS = 64


@dataclass(frozen=True)
class QuantizeInsert(Pass):
    """Quantize MatMul/Gemm layers to int8 weights and uint8 activations with QDQ pairs.

    Options:
        mode: static (activation ranges from calibration) or dynamic (DynamicQuantizeLinear
            per tensor and call).
        calibration: How static ranges are chosen from the calibration histograms: minmax,
            percentile, entropy (KL divergence, as TensorRT) or mse (least quantization error).
        percentile: The percentile kept by calibration=percentile, in (50, 100].
        per-channel: Weight scales per output channel (true) or one per matrix (false).
        attention: Also quantize attention's batched MatMuls (both inputs computed).
        smooth: SmoothQuant migration strength alpha in [0, 1]: activation channel j is divided
            by s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) and weight row j multiplied by it
            (none: off). Needs calibration data.
        exclude: Layers kept in float: node names, regexes searched in node names, or op types
            (e.g. Gemm).
        embeddings: Also store the constant tables read by Gather (embeddings) as int8, one
            symmetric scale per row.
        budget-cosine: A least cosine between the quantized and the input model's first output
            on the calibration data, in (0, 1); the layers whose quantization hurts it most stay
            in float until it is met.
    """

    name: ClassVar[str] = "quantize-insert"
    tolerance: ClassVar[float | None] = None
    needs_calibration: ClassVar[bool] = True

    mode: Mode = "static"
    calibration: Method = "mse"
    percentile: float = 99.99
    per_channel: bool = True
    attention: bool = False
    smooth: float | None = None
    exclude: tuple[str, ...] = field(default_factory=tuple)
    embeddings: bool = True
    budget_cosine: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("static", "dynamic"):
            raise ValueError(f"mode {self.mode!r}: expected static or dynamic")
        if self.calibration not in ("minmax", "percentile", "entropy", "mse"):
            raise ValueError(
                f"calibration {self.calibration!r}: expected minmax, percentile, entropy or mse"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile {self.percentile}: expected 50 < percentile <= 100")
        if self.smooth is not None and not 0.0 <= self.smooth <= 1.0:
            raise ValueError(f"smooth {self.smooth}: expected an alpha in [0, 1]")
        if self.budget_cosine is not None and not 0.0 < self.budget_cosine < 1.0:
            raise ValueError(f"budget-cosine {self.budget_cosine}: expected 0 < budget < 1")
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"exclude {pattern!r} is not a valid regex ({exc}); escape it to match "
                    "a name literally"
                ) from exc

    @property
    def needs_data(self) -> bool:
        """Whether this configuration reads calibration data."""
        return self.mode == "static" or self.smooth is not None or self.budget_cosine is not None

    def requires(self, model: Model) -> None:
        """QDQ with axis needs opset 13; something must be quantizable; data where needed."""
        version = opset_version(model.graph) or 0
        if version < MIN_OPSET:
            raise PreconditionError(
                f"{self.name}: per-channel QuantizeLinear/DequantizeLinear need opset "
                f">= {MIN_OPSET}, the model has {version}; re-export it at a newer opset"
            )
        if (
            not _candidates(model.graph, self.attention)
            and not self._tables(model.graph)
            and not _quantized(model.graph)
        ):
            raise PreconditionError(
                f"{self.name}: the graph has no MatMul/Gemm with a constant 2-D float weight "
                "(nor a constant table read by Gather) to quantize"
            )
        if self.needs_data:
            require_feeds(model, self.name)

    def run(self, model: Model) -> PassResult:
        """Quantize a copy of `model` (the teacher)."""
        work = model.copy()
        work.graph.toposort()
        recorded = _recorded_float(model)
        layers, skipped = self._layers(work.graph, recorded)
        tables = self._tables(work.graph)
        if not layers and not tables:
            return PassResult(model.copy(), False, {**skipped, "layers_quantized": 0.0})
        feeds = require_feeds(model, self.name) if self.needs_data and layers else ()
        smoothing = self._smooth(work, layers, feeds) if self.smooth is not None else {}
        ranges = self._ranges(work, layers, feeds) if self.mode == "static" else {}
        plan = Plan(self, work, layers, ranges, {}, tables)
        everything = frozenset(range(len(layers)))
        selected: frozenset[int] = everything
        budget: dict[str, float] = {}
        if self.budget_cosine is not None and layers:
            selected, budget = _meet_budget(self.budget_cosine, model, plan, feeds)
        if not selected and not tables:
            return PassResult(model.copy(), False, {**skipped, **budget, "layers_quantized": 0.0})
        out = plan.build(selected)
        kept = [layers[i].label for i in sorted(everything - selected)]
        if kept:
            metadata = {**out.metadata, FLOAT_KEY: json.dumps(sorted({*recorded, *kept}))}
            out = replace(out, metadata=metadata)
        stats = {**skipped, **smoothing, **budget, **_size_stats(model, out, plan, selected)}
        return PassResult(out, True, stats)

    def _layers(
        self, graph: gs.Graph, recorded: Iterable[str]
    ) -> tuple[list[Layer], dict[str, float]]:
        """The layers to quantize (Gemms rewritten as MatMul + Add), and counts of the others."""
        recorded = set(recorded)
        layers: list[Layer] = []
        skipped = {"layers_excluded": 0.0, "layers_float_recorded": 0.0}
        for layer in _candidates(graph, self.attention):
            reason = (
                "excluded"
                if self._excluded(layer.node)
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
                _gemm_as_matmul(graph, layer.node)
        return [_as_matmul(layer) for layer in layers], skipped

    def _tables(self, graph: gs.Graph) -> list[Table]:
        """The constant tables to store as int8 (none unless `embeddings`)."""
        if not self.embeddings:
            return []
        return [t for t in _tables(graph) if not any(self._excluded(n) for n in t.readers)]

    def _excluded(self, node: gs.Node) -> bool:
        name = node.name or ""
        return any(p == node.op or p == name or re.search(p, name) for p in self.exclude)

    def _smooth(
        self, work: Model, layers: Sequence[Layer], feeds: Sequence[Feeds]
    ) -> dict[str, float]:
        """Apply SmoothQuant to every group of weight layers sharing an input."""
        groups = _groups([layer for layer in layers if layer.weight is not None])
        stats = collect(work, [g[0].activation for g in groups], feeds, channels=True)
        counts = {"smoothed_groups": 0.0, "smooth_folded": 0.0, "smooth_mul": 0.0}
        assert self.smooth is not None
        for group, tensor_stats in zip(groups, stats, strict=True):
            assert tensor_stats.channel_max is not None
            folded = _smooth_group(work.graph, group, tensor_stats.channel_max, self.smooth)
            counts["smoothed_groups"] += 1
            counts["smooth_folded" if folded else "smooth_mul"] += 1
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


@dataclass
class Layer:
    """A MatMul to quantize.

    Attributes:
        node: The MatMul node in the working graph.
        label: Its name in stats and metadata.
        weight: The constant weight [k, n], or None for attention's batched MatMul.
    """

    node: gs.Node
    label: str
    weight: gs.Constant | None

    @property
    def activation(self) -> gs.Tensor:
        """Input 0."""
        return self.node.inputs[0]

    @property
    def inputs(self) -> list[gs.Tensor]:
        """The computed inputs that get activation Q/DQ."""
        return [self.activation] if self.weight is not None else list(self.node.inputs[:2])


@dataclass
class Table:
    """A constant table read only by Gathers on axis 0 (an embedding).

    Attributes:
        constant: The float table [rows, d] in the working graph.
        readers: The Gather nodes reading it, in graph order.
    """

    constant: gs.Constant
    readers: list[gs.Node]


def _tables(graph: gs.Graph) -> list[Table]:
    """The float 2-D constants that only Gathers on axis 0 read, as their data input."""
    found: dict[int, Table] = {}
    for node in graph.nodes:
        if node.op != "Gather" or not node.inputs or not isinstance(node.inputs[0], gs.Constant):
            continue
        table = node.inputs[0]
        values = np.asarray(table.values)
        if values.ndim != 2 or values.dtype.kind != "f" or int(node.attrs.get("axis", 0)) != 0:
            continue
        if isinstance(node.inputs[1], gs.Constant):
            continue  # fold's business: a constant gather is a constant
        found.setdefault(id(table), Table(table, [])).readers.append(node)
    return [t for t in found.values() if _only_gathered(t)]


def _only_gathered(table: Table) -> bool:
    readers = {id(n) for n in table.readers}
    return all(id(n) in readers for n in table.constant.outputs)


def _candidates(graph: gs.Graph, attention: bool) -> list[Layer]:
    """Float-weight MatMul/Gemm layers (and attention MatMuls) not yet quantized."""
    found: list[Layer] = []
    weighted = set()
    for match in weighted_matmuls(graph):
        weighted.add(id(match.node))
        values = np.asarray(match.weight.values)
        if match.weight_index != 1 or values.dtype.kind != "f" or _from_dq(match.activation):
            continue
        found.append(Layer(match.node, _label(match.node, len(found)), match.weight))
    if attention:
        for node in graph.nodes:
            if node.op == "MatMul" and id(node) not in weighted and _attention_matmul(node):
                found.append(Layer(node, _label(node, len(found)), None))
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return sorted(found, key=lambda layer: order[id(layer.node)])


def _attention_matmul(node: gs.Node) -> bool:
    inputs = node.inputs[:2]
    return not any(isinstance(t, gs.Constant) or _from_dq(t) for t in inputs) and all(
        t.dtype in (None, np.float32) for t in inputs
    )


def _from_dq(tensor: gs.Tensor) -> bool:
    source = producer(tensor)
    return source is not None and source.op in _QDQ


def _quantized(graph: gs.Graph) -> bool:
    return any(node.op == "DequantizeLinear" for node in graph.nodes)


def _label(node: gs.Node, index: int) -> str:
    return str(node.name) if node.name else f"#{index}"


def _as_matmul(layer: Layer) -> Layer:
    """The layer after its Gemm (if it was one) became a MatMul."""
    weight = layer.node.inputs[1] if layer.weight is not None else None
    assert weight is None or isinstance(weight, gs.Constant)
    return Layer(layer.node, layer.label, weight)


def _gemm_as_matmul(graph: gs.Graph, node: gs.Node) -> None:
    """Rewrite Gemm(x, W, C) in place as MatMul(x, alpha op(W)) (+ Add(beta C))."""
    weight = node.inputs[1]
    assert isinstance(weight, gs.Constant)
    values = np.asarray(weight.values)
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    matrix = (values.T if node.attrs.get("transB", 0) else values) * alpha
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    names = set(graph.tensors())
    node.op, node.attrs = "MatMul", {}
    node.inputs = [
        node.inputs[0],
        gs.Constant(fresh_name(names, weight.name), matrix.astype(values.dtype)),
    ]
    if bias is None or beta == 0.0:
        return
    assert isinstance(bias, gs.Constant)
    result = node.outputs[0]
    product = gs.Variable(fresh_name(names, f"{result.name}_matmul"), dtype=result.dtype)
    offset = np.asarray(bias.values) * np.asarray(beta, dtype=np.asarray(bias.values).dtype)
    add = gs.Node(
        "Add",
        fresh_node_name(graph, f"{node.name}/bias"),
        inputs=[product, gs.Constant(fresh_name(names, bias.name), offset)],
        outputs=[result],
    )
    node.outputs = [product]
    graph.nodes.insert(graph.nodes.index(node) + 1, add)


# --- calibration ------------------------------------------------------------------------------


def collect(
    model: Model, tensors: Sequence[gs.Tensor], feeds: Sequence[Feeds], channels: bool
) -> list[TensorStats]:
    """Histograms (and per-channel max |x| with `channels`) of tensors over real-token rows."""
    stats = [TensorStats() for _ in tensors]
    if not tensors:
        return stats
    for batch, values in zip(feeds, activations(model, tensors, feeds), strict=True):
        for stat, value in zip(stats, values, strict=True):
            stat.add(token_rows(value, batch), channels)
    return stats


# --- SmoothQuant ------------------------------------------------------------------------------


def _groups(layers: Sequence[Layer]) -> list[list[Layer]]:
    groups: dict[int, list[Layer]] = {}
    for layer in layers:
        groups.setdefault(id(layer.activation), []).append(layer)
    return list(groups.values())


def _smooth_group(
    graph: gs.Graph, group: Sequence[Layer], channel_max: np.ndarray, alpha: float
) -> bool:
    """Divide the group's input by s and multiply its weights' rows by s; True if folded."""
    constants = [layer.weight for layer in group if layer.weight is not None]
    weights = [np.asarray(c.values) for c in constants]
    weight_max = np.max([np.max(np.abs(w), axis=1) for w in weights], axis=0)
    factors = smooth_factors(channel_max.astype(np.float64), weight_max.astype(np.float64), alpha)
    names = set(graph.tensors())
    for layer, constant, w in zip(group, constants, weights, strict=True):
        scaled = gs.Constant(
            fresh_name(names, f"{constant.name}_smooth"), (factors[:, None] * w).astype(w.dtype)
        )
        layer.node.inputs[1] = scaled
        layer.weight = scaled
    tensor = group[0].activation
    if _fold_division(graph, tensor, factors, names):
        readers = {id(layer.node) for layer in group}
        _compensate(
            graph, tensor, [n for n in tensor.outputs if id(n) not in readers], factors, names
        )
        return True
    divided = _mul(graph, tensor, 1.0 / factors, names, "smooth")
    for layer in group:
        layer.node.inputs[0] = divided
    return False


def _fold_division(
    graph: gs.Graph, tensor: gs.Tensor, factors: np.ndarray, names: set[str]
) -> bool:
    """Divide `tensor` by `factors` inside its producer (LayerNorm or Mul by a constant)."""
    source = producer(tensor)
    if source is None or is_graph_output(graph, tensor):
        return False
    if source.op == "LayerNormalization" and source.attrs.get("axis", -1) == -1:
        params = source.inputs[1:3]
        if not all(isinstance(p, gs.Constant) and p.values.shape == factors.shape for p in params):
            return False
        for index, param in enumerate(params, start=1):
            source.inputs[index] = _divided(param, factors, names)
        return True
    if source.op == "Mul":
        constant = [t for t in source.inputs if isinstance(t, gs.Constant)]
        if len(constant) != 1 or not _broadcasts_on_last(constant[0], factors.size):
            return False
        index = next(i for i, t in enumerate(source.inputs) if t is constant[0])
        source.inputs[index] = _divided(constant[0], factors, names)
        return True
    return False


def _broadcasts_on_last(constant: gs.Constant, width: int) -> bool:
    shape = constant.values.shape
    return all(d == 1 for d in shape[:-1]) and (not shape or shape[-1] in (1, width))


def _divided(constant: gs.Constant, factors: np.ndarray, names: set[str]) -> gs.Constant:
    values = np.asarray(constant.values)
    shape = (*values.shape[:-1], factors.size) if values.ndim else (factors.size,)
    divided = np.broadcast_to(values, shape) / factors.reshape(-1)
    return gs.Constant(fresh_name(names, f"{constant.name}_smooth"), divided.astype(values.dtype))


def _compensate(
    graph: gs.Graph,
    tensor: gs.Tensor,
    readers: Sequence[gs.Node],
    factors: np.ndarray,
    names: set[str],
) -> None:
    """Give `readers` back the undivided tensor through Mul(tensor, factors)."""
    if not readers:
        return
    restored = _mul(graph, tensor, factors, names, "unsmooth")
    for reader in readers:
        reader.inputs = [restored if t is tensor else t for t in reader.inputs]


def _mul(
    graph: gs.Graph, tensor: gs.Tensor, factors: np.ndarray, names: set[str], tag: str
) -> gs.Variable:
    out = gs.Variable(fresh_name(names, f"{tensor.name}_{tag}"), dtype=tensor.dtype)
    constant = gs.Constant(
        fresh_name(names, f"{tensor.name}_{tag}_factors"), factors.astype(np.float32)
    )
    graph.nodes.append(
        gs.Node(
            "Mul",
            fresh_node_name(graph, f"{tensor.name}/{tag}"),
            inputs=[tensor, constant],
            outputs=[out],
        )
    )
    return out


# --- the QDQ rewrite --------------------------------------------------------------------------


@dataclass
class Plan:
    """Everything needed to write the QDQ graph for any subset of the layers.

    Attributes:
        options: The pass.
        work: The float (canonicalized, smoothed) model the layers live in.
        layers: The layers that may be quantized.
        ranges: Static activation ranges by tensor name (empty in dynamic mode).
        weights: Quantized weights by layer index, filled on first use.
        tables: The constant tables stored as int8 in every build.
    """

    options: QuantizeInsert
    work: Model
    layers: list[Layer]
    ranges: dict[str, tuple[float, float]]
    weights: dict[int, tuple[np.ndarray, np.ndarray]]
    tables: list[Table] = field(default_factory=list)
    quantized_tables: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def quantized_table(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Table `index` as int8 rows and one scale per row."""
        if index not in self.quantized_tables:
            values = np.asarray(self.tables[index].constant.values)
            self.quantized_tables[index] = quantize_rows(values)
        return self.quantized_tables[index]

    def quantized_weight(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Layer `index`'s int8 weight and scale."""
        if index not in self.weights:
            weight = self.layers[index].weight
            assert weight is not None
            self.weights[index] = quantize_weight(
                np.asarray(weight.values), self.options.per_channel
            )
        return self.weights[index]

    def build(self, selected: Iterable[int]) -> Model:
        """A copy of the working model with the `selected` layers quantized."""
        out = self.work.copy()
        position = {id(n): i for i, n in enumerate(self.work.graph.nodes)}
        writer = _Writer(out.graph, self.options.mode, self.ranges)
        for index in sorted(selected):
            layer = self.layers[index]
            node = out.graph.nodes[position[id(layer.node)]]
            if layer.weight is None:
                node.inputs[0] = writer.activation(node.inputs[0], signed=False)
                node.inputs[1] = writer.activation(node.inputs[1], signed=True)
            else:
                node.inputs[0] = writer.activation(node.inputs[0], signed=False)
                node.inputs[1] = writer.weight(node, *self.quantized_weight(index))
        for index, table in enumerate(self.tables):
            readers = [out.graph.nodes[position[id(n)]] for n in table.readers]
            dequantized = writer.table(table.constant.name, *self.quantized_table(index))
            for reader in readers:
                reader.inputs[0] = dequantized
        out.graph.toposort()
        return out


class _Writer:
    """Adds Q/DQ nodes to a graph, one activation pair per tensor."""

    def __init__(self, graph: gs.Graph, mode: str, ranges: Mapping[str, tuple[float, float]]):
        self.graph, self.mode, self.ranges = graph, mode, ranges
        self.names = set(graph.tensors())
        self.done: dict[tuple[int, bool], gs.Variable] = {}

    def activation(self, tensor: gs.Tensor, signed: bool) -> gs.Variable:
        """The dequantized twin of `tensor` (made once per tensor and signedness)."""
        key = (id(tensor), signed and self.mode == "static")
        if key not in self.done:
            self.done[key] = (
                self._dynamic(tensor) if self.mode == "dynamic" else self._static(tensor, key[1])
            )
        return self.done[key]

    def _static(self, tensor: gs.Tensor, signed: bool) -> gs.Variable:
        lo, hi = self.ranges[tensor.name]
        zero: np.integer
        if signed:
            scale, zero = int8_scale(max(-lo, hi)), np.int8(0)
        else:
            scale, zero = uint8_params(lo, hi)
        params = [
            self._constant(f"{tensor.name}_scale", np.asarray(scale, np.float32)),
            self._constant(f"{tensor.name}_zero_point", np.asarray(zero)),
        ]
        quantized = self._variable(f"{tensor.name}_quantized", np.asarray(zero).dtype.type)
        self._node("QuantizeLinear", tensor.name, [tensor, *params], [quantized])
        return self._dequantize(tensor.name, [quantized, *params])

    def _dynamic(self, tensor: gs.Tensor) -> gs.Variable:
        outputs = [
            self._variable(f"{tensor.name}_quantized", np.uint8),
            self._variable(f"{tensor.name}_scale", np.float32),
            self._variable(f"{tensor.name}_zero_point", np.uint8),
        ]
        self._node("DynamicQuantizeLinear", tensor.name, [tensor], outputs)
        return self._dequantize(tensor.name, outputs)

    def weight(self, node: gs.Node, values: np.ndarray, scale: np.ndarray) -> gs.Variable:
        """DequantizeLinear(W_q, scale, 0, axis=1) in place of the node's weight."""
        base = node.inputs[1].name
        inputs = [
            self._constant(f"{base}_quantized", values),
            self._constant(f"{base}_scale", scale),
            self._constant(f"{base}_zero_point", np.zeros(scale.shape, np.int8)),
        ]
        return self._dequantize(base, inputs, axis=1)

    def table(self, base: str, values: np.ndarray, scale: np.ndarray) -> gs.Variable:
        """DequantizeLinear(T_q, scale, 0, axis=0): a table with one scale per row."""
        inputs = [
            self._constant(f"{base}_quantized", values),
            self._constant(f"{base}_scale", scale),
            self._constant(f"{base}_zero_point", np.zeros(scale.shape, np.int8)),
        ]
        return self._dequantize(base, inputs, axis=0)

    def _dequantize(
        self, base: str, inputs: list[gs.Tensor], axis: int | None = None
    ) -> gs.Variable:
        out = self._variable(f"{base}_dequantized", np.float32)
        self._node("DequantizeLinear", base, inputs, [out], {} if axis is None else {"axis": axis})
        return out

    def _node(
        self,
        op: str,
        base: str,
        inputs: list[gs.Tensor],
        outputs: list[gs.Tensor],
        attrs: dict[str, int] | None = None,
    ) -> None:
        name = fresh_node_name(self.graph, f"{base}/{op}")
        self.graph.nodes.append(gs.Node(op, name, attrs or {}, inputs, outputs))

    def _constant(self, name: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(fresh_name(self.names, name), values)

    def _variable(self, name: str, dtype: type) -> gs.Variable:
        return gs.Variable(fresh_name(self.names, name), dtype=dtype)


# --- the fidelity budget ----------------------------------------------------------------------


def _meet_budget(
    budget: float, teacher: Model, plan: Plan, feeds: Sequence[Feeds]
) -> tuple[frozenset[int], dict[str, float]]:
    """Keep the most sensitive layers in float until the output cosine meets `budget`.

    One model (one ONNX Runtime session) per layer set tried: the fully quantized one on all
    the data (its cosine on the sensitivity batches taken from the same outputs), one per layer
    on the sensitivity batches, then the count of float layers that the summed sensitivities
    predict, checked on all the data and moved one layer at a time to the least that meets it.
    """
    reference = first_outputs(teacher, feeds)
    few = sensitivity_batches(feeds)
    scores = 0

    def cosine(outputs: Sequence[np.ndarray], index: Sequence[int]) -> float:
        return pooled_cosine([reference[i] for i in index], outputs, [feeds[i] for i in index])

    def score(selected: frozenset[int], index: Sequence[int]) -> float:
        nonlocal scores
        if not selected and not plan.tables:
            return 1.0  # the float model itself
        scores += 1
        return cosine(first_outputs(plan.build(selected), [feeds[i] for i in index]), index)

    everything = frozenset(range(len(plan.layers)))
    every = range(len(feeds))
    outputs = first_outputs(plan.build(everything), feeds)
    scores += 1
    first = cosine(outputs, every)
    stats: dict[str, float] = {"budget_cosine_first": first}
    selected, result = everything, first
    if first < budget:
        base = cosine([outputs[i] for i in few], few)
        gains = {
            i: score(everything - {i}, few) - base
            for i in steps(sorted(everything), "sensitivity of each layer")
        }
        for i, gain in gains.items():
            stats[f"layer.{plan.layers[i].label}.sensitivity"] = gain
        order = sorted(gains, key=lambda i: -gains[i])
        count = _predicted_count(first, [gains[i] for i in order], budget)
        results = {0: first}

        def at(count: int) -> float:
            if count not in results:
                results[count] = score(everything - set(order[:count]), every)
                log.debug("%d layers float: cosine %.5f", count, results[count])
            return results[count]

        while count < len(order) and at(count) < budget:
            count += 1
        while count > 1 and at(count) >= budget and at(count - 1) >= budget:
            count -= 1
        selected, result = everything - set(order[:count]), at(count)
        for i in order[:count]:
            stats[f"layer.{plan.layers[i].label}.float_budget"] = 1.0
    stats.update(
        {"budget_cosine": result, "budget_met": float(result >= budget), "budget_models": scores}
    )
    return selected, stats


def _predicted_count(first: float, gains: Sequence[float], budget: float) -> int:
    """The fewest layers (most sensitive first) whose summed gains lift `first` to `budget`."""
    total = first
    for count, gain in enumerate(gains, start=1):
        total += max(gain, 0.0)
        if total >= budget:
            return count
    return len(gains)


def sensitivity_batches(feeds: Sequence[Feeds], rows: int = SENSITIVITY_ROWS) -> list[int]:
    """Indices of calibration batches spread evenly over the set, about `rows` rows in all."""
    if not feeds:
        return []
    sizes = [len(next(iter(batch.values()))) if batch else 1 for batch in feeds]
    count = min(len(feeds), max(1, -(-rows * len(feeds) // max(sum(sizes), 1))))
    spread = np.linspace(0, len(feeds) - 1, count).round().astype(int)
    return sorted({int(i) for i in spread})


# --- stats and metadata -----------------------------------------------------------------------


def _recorded_float(model: Model) -> list[str]:
    try:
        value = json.loads(model.metadata.get(FLOAT_KEY, "[]"))
    except json.JSONDecodeError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _size_stats(
    before: Model, after: Model, plan: Plan, selected: frozenset[int]
) -> dict[str, float]:
    weight_before = weight_after = 0
    stats: dict[str, float] = {}
    for index, layer in enumerate(plan.layers):
        if index not in selected:
            stats.setdefault(f"layer.{layer.label}.float_budget", 1.0)
            continue
        stats[f"layer.{layer.label}.quantized"] = 1.0
        if layer.weight is not None:
            values, scale = plan.quantized_weight(index)
            weight_before += np.asarray(layer.weight.values).nbytes
            weight_after += values.nbytes + scale.nbytes + scale.size  # int8 zero points
        for tensor in layer.inputs:
            if tensor.name in plan.ranges:
                lo, hi = plan.ranges[tensor.name]
                stats[f"activation.{tensor.name}.range"] = hi - lo
    table_before = table_after = 0
    for index, table in enumerate(plan.tables):
        values, scale = plan.quantized_table(index)
        table_before += np.asarray(table.constant.values).nbytes
        table_after += values.nbytes + scale.nbytes + scale.size
        stats[f"table.{table.constant.name}.quantized"] = 1.0
    weight_layers = [i for i in selected if plan.layers[i].weight is not None]
    stats.update(
        {
            "tables_quantized": float(len(plan.tables)),
            "table_bytes_before": float(table_before),
            "table_bytes_after": float(table_after),
            "layers_quantized": float(len(weight_layers)),
            "attention_quantized": float(len(selected) - len(weight_layers)),
            "layers_float": float(len(plan.layers) - len(selected)),
            "weight_bytes_before": float(weight_before),
            "weight_bytes_after": float(weight_after),
            "model_bytes_before": float(_constant_bytes(before.graph)),
            "model_bytes_after": float(_constant_bytes(after.graph)),
        }
    )
    return stats


def _constant_bytes(graph: gs.Graph) -> int:
    return sum(
        np.asarray(t.values).nbytes for t in graph.tensors().values() if isinstance(t, gs.Constant)
    )
