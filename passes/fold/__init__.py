"""fold: f(constants) -> constant, Shape(x) -> dims, no-op(x) -> x, decomposed op -> fused op.

Exact constant and shape folding, run to a fixed point. Each round analyses the graph
(`nlpress.ir.shapes`: dtypes, symbolic shapes, small integer values) and applies these rewrites
(`constants`, `noops`, `canonical`, `contrib` and `dedupe` hold them by concern; `_REWRITES`
orders them):

- Constant nodes become initializers; identical initializers are merged; identical nodes on the
  same inputs are merged (common subexpressions).
- Shape folding: any integer tensor whose value the analysis knows (a Shape of a static tensor,
  the arithmetic on it) becomes a constant. With symbolic dims, a Reshape target such as
  `(batch, sequence, -1, 32)` whose symbolic dims equal the input's dims at the same positions
  becomes the constant `(0, 0, -1, 32)`, and an Expand target equal to its input's dims becomes
  ones; batch and sequence stay symbolic.
- Constant folding: every node whose inputs are all constant is run in ONNX Runtime (the kernels
  that run the model, so the result is exact) unless its result would exceed `max-bytes` and be
  larger than its inputs: folding never inflates the model. DequantizeLinear is never folded:
  its integer input is how a quantized model stores its weights (quantize-insert's QDQ form),
  and the lowering turns it into integer arithmetic.
- No-ops are removed: Identity, inference Dropout, Cast to the same type, Reshape/Expand/Slice to
  the same shape, Transpose by the identity, a one-input Concat, Where with a constant condition,
  x + 0, x - 0, x * 1, x / 1 (when the output keeps x's shape and type).
- Canonical forms: a commutative Add/Mul takes its constant operand second; a decomposed layer
  norm becomes LayerNormalization (opset 17+); an erf-form GELU becomes Gelu (opset 20+ only:
  for older opsets the erf form stays, because Gelu does not exist in those opsets and
  com.microsoft.Gelu would tie the graph to ONNX Runtime; TVM imports the erf form directly); a
  QLinearMatMul (ONNX Runtime's QOperator format) becomes DequantizeLinear -> MatMul ->
  QuantizeLinear, and ONNX Runtime's dynamic MatMulInteger with its Cast and scaling becomes
  MatMul(DequantizeLinear(a), DequantizeLinear(W)): the QDQ forms the lowering makes integer.
  A constant int8 weight cast to float and scaled (a weight-only file's Cast -> Mul) becomes
  DequantizeLinear(W, s), which the lowering keeps as int8.
- ONNX Runtime's fused com.microsoft ops that are short formulas (SkipLayerNormalization,
  BiasGelu, FastGelu, Gelu) become the standard ops they fuse (`contrib`).

What later passes may rely on after fold (quantize-insert, prune-sparsify, factorize-matmul):

- A dense layer is `MatMul(x, W)` with `W` an initializer of shape `[k, n]` as the second input,
  optionally followed by `Add(y, b)` with `y` the MatMul output and `b` an initializer of shape
  `[n]` as the second input. fold never folds, transposes or rescales a MatMul weight, never
  merges a bias into the MatMul, and never turns the pair into a Gemm. (A Gemm written by the
  exporter stays a Gemm, unless it sits between a Reshape that flattens x's rows and one that
  restores them, as GPT-2's Conv1D layers do: then it is this MatMul + Add on x.)
- Weights are initializers, never Constant nodes; an initializer is shared only where two readers
  used bitwise-identical values.
- No Identity, Dropout or no-op Cast/Reshape sits between a weight and its reader.
- With static shapes, no Shape, ConstantOfShape, Range or shape arithmetic is left; nodes are in
  topological order.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.ir.shapes import Shapes, analyze
from nlpress.passes.base import SHAPES_OPTION, Pass, PassResult, PreconditionError
from nlpress.passes.fold.canonical import (
    canonical_operands,
    decompose_qlinear,
    fuse,
    integer_matmul_as_qdq,
    scaled_cast_as_dequantize,
    unflattened_gemm,
)
from nlpress.passes.fold.constants import (
    constants_to_initializers,
    fold_constants,
    fold_known_values,
    symbolic_targets,
)
from nlpress.passes.fold.contrib import decompose_contrib
from nlpress.passes.fold.dedupe import deduplicate
from nlpress.passes.fold.noops import remove_noops

__all__ = ["Fold"]

log = logging.getLogger(__name__)

_MAX_ROUNDS = 32
_DEFAULT_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Fold(Pass):
    """Fold constants and shapes exactly, remove no-ops, and canonicalize fused ops.

    Options:
        shape: Static input shapes, e.g. `input_ids:1x128`, which fold every shape computation
            to constants; without them batch and sequence stay symbolic.
        max-bytes: A folded constant larger than this is kept only when it is no larger than
            the constants it is computed from.
    """

    name = "fold"
    shape: Mapping[str, tuple[int | str, ...]] = field(default_factory=dict, metadata=SHAPES_OPTION)
    max_bytes: int = _DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError(f"max-bytes must be at least 0, not {self.max_bytes}")
        for name, dims in self.shape.items():
            if any(isinstance(d, int) and d < 0 for d in dims):
                raise ValueError(f"shape {name}: dims must not be negative")

    def requires(self, model: Model) -> None:
        """Every named input must exist and have the declared rank and static sizes."""
        inputs = {t.name: t for t in model.graph.inputs}
        for name, dims in self.shape.items():
            if name not in inputs:
                valid = ", ".join(inputs) or "none"
                raise PreconditionError(f"fold: no graph input {name!r}; inputs are {valid}")
            declared = inputs[name].shape
            if declared is None:
                continue
            if len(declared) != len(dims):
                raise PreconditionError(
                    f"fold: input {name} has rank {len(declared)}, but shape gives {len(dims)} dims"
                )
            for have, want in zip(declared, dims, strict=True):
                if isinstance(have, int) and have >= 0 and have != want:
                    raise PreconditionError(
                        f"fold: input {name} is declared {list(declared)}, not {list(dims)}"
                    )

    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        """Fold a copy of `model` to a fixed point."""
        self.requires(model)
        if _has_non_tensors(model.graph):
            log.info("fold: the graph carries sequence or optional values; left unchanged")
            return PassResult(model, False, {"skipped_non_tensor_graph": 1.0})
        out = model.copy()
        graph = out.graph
        before = _census(graph)
        counts: Counter[str] = Counter()
        counts["inputs_shaped"] = _apply_shapes(graph, self.shape)
        graph.toposort()
        rounds = 0
        while rounds < _MAX_ROUNDS:
            rounds += 1
            done = _round(graph, self.max_bytes)
            counts.update(done)
            if not any(done.values()):
                break
        after = _census(graph)
        changed = any(counts.values()) or before["order"] != after["order"]
        return PassResult(out, changed, _stats(before, after, counts, rounds))


# ---- one round --------------------------------------------------------------------------------

Rewrite = Callable[[gs.Graph, Shapes, int], int]


def _round(graph: gs.Graph, max_bytes: int) -> dict[str, int]:
    # Every rewrite preserves each surviving tensor's value, so one analysis serves the round;
    # tensors made during the round are simply unknown to it.
    shapes = analyze(graph)
    done: dict[str, int] = {}
    for key, rewrite in _REWRITES:
        done[key] = rewrite(graph, shapes, max_bytes)
        if done[key]:
            graph.toposort()
    nodes_before = len(graph.nodes)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    done["dead_removed"] = nodes_before - len(graph.nodes)
    return done


_REWRITES: tuple[tuple[str, Rewrite], ...] = (
    ("constants_to_initializers", constants_to_initializers),
    ("scaled_casts_as_dequantize", scaled_cast_as_dequantize),  # before folding floats W
    ("contrib_decomposed", decompose_contrib),
    ("shape_folded", fold_known_values),
    ("targets_folded", symbolic_targets),
    ("folded", fold_constants),
    ("noops_removed", remove_noops),
    ("operands_reordered", canonical_operands),
    ("fused", fuse),
    ("qlinear_decomposed", decompose_qlinear),
    ("integer_matmuls_as_qdq", integer_matmul_as_qdq),
    ("gemms_unflattened", unflattened_gemm),
    ("deduplicated", deduplicate),
)


# ---- helpers ----------------------------------------------------------------------------------


def _apply_shapes(graph: gs.Graph, shapes: Mapping[str, tuple[int | str, ...]]) -> int:
    count = 0
    for tensor in graph.inputs:
        dims = shapes.get(tensor.name)
        if dims is not None and list(tensor.shape or []) != list(dims):
            tensor.shape = list(dims)
            count += 1
    return count


def _has_non_tensors(graph: gs.Graph) -> bool:
    """Whether any graph input or output, or any op, carries sequences or optionals."""
    values = [*graph.inputs, *graph.outputs]
    if any(getattr(t, "type", "tensor_type") != "tensor_type" for t in values):
        return True
    graphs = [graph, *graph.subgraphs(recursive=True)]
    ops = [n.op for g in graphs for n in g.nodes]
    return any(op.startswith(("Sequence", "Optional")) or "Sequence" in op for op in ops)


def _census(graph: gs.Graph) -> dict[str, object]:
    constants = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    return {
        "nodes": len(graph.nodes),
        "ops": Counter(n.op for n in graph.nodes),
        "bytes": sum(int(np.asarray(t.values).nbytes) for t in constants),
        "order": [id(n) for n in graph.nodes],
    }


def _stats(
    before: dict[str, object], after: dict[str, object], counts: Counter[str], rounds: int
) -> dict[str, float]:
    stats: dict[str, float] = {
        "nodes_before": float(before["nodes"]),  # type: ignore[arg-type]
        "nodes_after": float(after["nodes"]),  # type: ignore[arg-type]
        "bytes_before": float(before["bytes"]),  # type: ignore[arg-type]
        "bytes_after": float(after["bytes"]),  # type: ignore[arg-type]
        "rounds": float(rounds),
    }
    stats.update({key: float(value) for key, value in sorted(counts.items())})
    for label, census in (("before", before), ("after", after)):
        ops: Counter[str] = census["ops"]  # type: ignore[assignment]
        stats.update({f"{label}.{op}": float(n) for op, n in sorted(ops.items())})
    return stats
