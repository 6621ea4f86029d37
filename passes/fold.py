"""fold: f(constants) -> constant, Shape(x) -> dims, no-op(x) -> x, decomposed op -> fused op.

Exact constant and shape folding, run to a fixed point. Each round analyses the graph
(`nlpress.ir.shapes`: dtypes, symbolic shapes, small integer values) and applies these rewrites:

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
  com.microsoft.Gelu would tie the graph to ONNX Runtime; TVM imports the erf form directly).

What later passes may rely on after fold (quantize-insert, prune-sparsify, factorize-matmul):

- A dense layer is `MatMul(x, W)` with `W` an initializer of shape `[k, n]` as the second input,
  optionally followed by `Add(y, b)` with `y` the MatMul output and `b` an initializer of shape
  `[n]` as the second input. fold never folds, transposes or rescales a MatMul weight, never
  merges a bias into the MatMul, and never turns the pair into a Gemm. (A Gemm written by the
  exporter stays a Gemm.)
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
from nlpress.ir.evaluate import NOT_EVALUABLE, evaluate
from nlpress.ir.fusions import fuse_gelu, fuse_layer_norm
from nlpress.ir.graph import bypass, constant_value, is_graph_output, opset_version
from nlpress.ir.shapes import Info, Shapes, analyze
from nlpress.ir.symbolic import product
from nlpress.passes.base import SHAPES_OPTION, Pass, PassResult, PreconditionError

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


def _constants_to_initializers(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Constant(value) -> initializer."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "Constant" or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        value = _constant_node_value(node)
        if value is None or is_graph_output(graph, out):
            continue
        _detach(node)
        out.to_constant(value)
        count += 1
    return count


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        return constant_value(node.outputs[0])
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(list(attrs[key]), dtype=dtype)
    return None


def _fold_known_values(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Shape(x), Gather(Shape(x), i), ... -> the constant the analysis computed."""
    count = 0
    for node in list(graph.nodes):
        if node.op == "Constant" or not node.outputs or _has_subgraph(node):
            continue
        values = [shapes[t].known_value for t in node.outputs]
        if any(v is None for v in values) or any(is_graph_output(graph, t) for t in node.outputs):
            continue
        outputs = list(node.outputs)
        _detach(node)
        for tensor, value in zip(outputs, values, strict=True):
            tensor.to_constant(value)
        count += 1
    return count


def _fold_constants(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """f(constants) -> constant, evaluated in ONNX Runtime, within the size guard."""
    candidates = _candidates(graph, shapes, max_bytes)
    values = evaluate(graph, candidates)
    folded: set[int] = set()
    count = 0
    for node in candidates:
        inputs_ok = all(_is_constant(t) or id(t) in folded for t in node.inputs)
        outs = [values.get(id(t)) for t in node.outputs]
        if not inputs_ok or any(v is None for v in outs):
            continue
        in_bytes = sum(_input_bytes(t, values) for t in node.inputs)
        if sum(v.nbytes for v in outs if v is not None) > max(max_bytes, in_bytes):
            continue
        folded.update(id(t) for t in node.outputs)
        _materialize(graph, node, outs)  # type: ignore[arg-type]
        count += 1
    return count


# Never evaluated: Constant (already a value), DequantizeLinear (quantized storage).
_KEPT = frozenset({"Constant", "DequantizeLinear"})


def _candidates(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> list[gs.Node]:
    chosen: set[int] = set()
    result = []
    for node in graph.nodes:
        if node.op in NOT_EVALUABLE or node.op in _KEPT or _has_subgraph(node):
            continue
        if not node.outputs or node.domain not in (None, "", "ai.onnx", "com.microsoft"):
            continue
        if not all(_is_constant(t) or id(t) in chosen for t in node.inputs):
            continue
        if any(_static_bytes(shapes[t]) > max(max_bytes, 1 << 28) for t in node.outputs):
            continue
        chosen.update(id(t) for t in node.outputs)
        result.append(node)
    return result


def _materialize(graph: gs.Graph, node: gs.Node, values: list[np.ndarray]) -> None:
    """Turn the outputs of `node` into constants (graph outputs are written by Constant nodes)."""
    outputs = list(node.outputs)
    _detach(node)
    for tensor, value in zip(outputs, values, strict=True):
        if is_graph_output(graph, tensor):
            const = gs.Constant(f"{tensor.name}__value", np.asarray(value))
            graph.nodes.append(
                gs.Node("Constant", f"{tensor.name}__const", {"value": const}, outputs=[tensor])
            )
        else:
            tensor.to_constant(np.asarray(value))


def _symbolic_targets(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Reshape/Expand targets made of the input's dims -> constants (0 or 1 stand for them)."""
    count = 0
    for node in list(graph.nodes):
        if node.op not in ("Reshape", "Expand") or len(node.inputs) < 2:
            continue
        if _is_constant(node.inputs[1]):
            continue
        source, target = _constant_target(node, shapes)
        if target is not None:
            name = _unique(graph, f"{node.inputs[1].name}__folded")
            node.inputs = [source, gs.Constant(name, target)]
            count += 1
    return count


def _constant_target(node: gs.Node, shapes: Shapes) -> tuple[gs.Tensor, np.ndarray | None]:
    """A constant target, for the node's input or (Reshape) the start of its chain of reshapes."""
    source, target = node.inputs[0], shapes[node.inputs[1]].value
    if target is None:
        return source, None
    if node.op == "Expand":
        dims = _expand_target(shapes[source].shape, target)
        return source, None if dims is None else np.array(dims, dtype=np.int64)
    allowzero = bool(node.attrs.get("allowzero", 0))
    out = shapes[node.outputs[0]].shape
    while True:
        dims = _reshape_target(shapes[source].shape, target, out, allowzero)
        if dims is not None:
            return source, np.array(dims, dtype=np.int64)
        upstream = source.inputs[0] if source.inputs else None
        if upstream is None or upstream.op not in _REORDERING_FREE or not upstream.inputs:
            return source, None
        source = upstream.inputs[0]


# Ops whose output holds the input's elements in the same order (only the shape differs).
_REORDERING_FREE = frozenset(("Reshape", "Flatten", "Squeeze", "Unsqueeze"))


def _reshape_target(
    source: tuple[object, ...] | None,
    target: tuple[object, ...],
    out: tuple[object, ...] | None,
    allowzero: bool,
) -> list[int] | None:
    if source is None:
        return None
    dims: list[int | None] = []
    for i, d in enumerate(target):
        if d == -1 and out is not None and isinstance(out[i], int):
            dims.append(out[i])  # type: ignore[arg-type]
        elif isinstance(d, int) and not (d == 0 and not allowzero):
            dims.append(d)
        elif not allowzero and i < len(source) and source[i] == (out[i] if out else d):
            dims.append(0)
        else:
            dims.append(None)
    unresolved = dims.count(None)
    if unresolved > 1 or (unresolved == 1 and -1 in dims) or (unresolved and allowzero):
        return None
    return [-1 if d is None else d for d in dims]


def _expand_target(
    source: tuple[object, ...] | None, target: tuple[object, ...]
) -> list[int] | None:
    if source is None:
        return None
    offset = len(target) - len(source)
    dims: list[int] = []
    for i, d in enumerate(target):
        if isinstance(d, int):
            dims.append(d)
        elif i >= offset and source[i - offset] == d:
            dims.append(1)
        else:
            return None
    return dims


def _remove_noops(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Identity, Dropout, same-type Cast, same-shape Reshape/Expand/..., x+0, x*1 -> x."""
    count = 0
    for node in list(graph.nodes):
        source = _noop_source(graph, node, shapes)
        if source is not None and bypass(graph, node, source, node.outputs[0]):
            count += 1
    return count


def _noop_source(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    if not node.outputs or not node.inputs or node.domain not in (None, "", "ai.onnx"):
        return None
    out = shapes[node.outputs[0]]
    check = _NOOP_CHECKS.get(node.op)
    if check is None:
        return None
    source = check(graph, node, shapes)
    if source is None or source is node.outputs[0]:
        return None
    if node.op in ("Identity", "Dropout"):
        return source
    info = shapes[source]
    return source if _same_tensor_type(info, out) else None


def _same_tensor_type(a: Info, b: Info) -> bool:
    return a.shape is not None and a.shape == b.shape and a.dtype is not None and a.dtype == b.dtype


def _first(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    return node.inputs[0]


def _dropout(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    if len(node.outputs) > 1 and (
        node.outputs[1].outputs or is_graph_output(graph, node.outputs[1])
    ):
        return None
    if len(node.inputs) > 2 and node.inputs[2].name:
        training = constant_value(node.inputs[2])
        if training is None or bool(training):
            return None
    return node.inputs[0]


def _transpose(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    perm = node.attrs.get("perm")
    return node.inputs[0] if perm is not None and list(perm) == sorted(perm) else None


def _concat(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    return node.inputs[0] if len(node.inputs) == 1 else None


def _slice(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    steps = node.inputs[4] if len(node.inputs) > 4 and node.inputs[4].name else None
    step_values = constant_value(steps) if steps is not None else np.ones(1)
    starts = constant_value(node.inputs[1])
    if step_values is None or starts is None or np.any(step_values != 1) or np.any(starts != 0):
        return None
    return node.inputs[0]


def _where(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    cond = constant_value(node.inputs[0])
    if cond is None or cond.size == 0:
        return None
    if cond.all():
        return node.inputs[1]
    return node.inputs[2] if not cond.any() else None


def _neutral(
    value: float, second_only: bool
) -> Callable[[gs.Graph, gs.Node, Shapes], gs.Tensor | None]:
    def check(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
        if len(node.inputs) != 2:
            return None
        for index in (1,) if second_only else (1, 0):
            const = constant_value(node.inputs[index])
            if const is not None and const.size and np.all(const == value):
                return node.inputs[1 - index]
        return None

    return check


def _cast(graph: gs.Graph, node: gs.Node, shapes: Shapes) -> gs.Tensor | None:
    return node.inputs[0]


_NOOP_CHECKS: dict[str, Callable[[gs.Graph, gs.Node, Shapes], gs.Tensor | None]] = {
    "Identity": _first,
    "Dropout": _dropout,
    "Cast": _cast,
    "Reshape": _first,
    "Expand": _first,
    "Squeeze": _first,
    "Unsqueeze": _first,
    "Flatten": _first,
    "Transpose": _transpose,
    "Concat": _concat,
    "Slice": _slice,
    "Where": _where,
    "Add": _neutral(0.0, second_only=False),
    "Sub": _neutral(0.0, second_only=True),
    "Mul": _neutral(1.0, second_only=False),
    "Div": _neutral(1.0, second_only=True),
}


def _canonical_operands(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Add(c, x) -> Add(x, c), Mul(c, x) -> Mul(x, c)."""
    count = 0
    for node in graph.nodes:
        if node.op in ("Add", "Mul") and len(node.inputs) == 2:
            a, b = node.inputs
            if _is_constant(a) and not _is_constant(b):
                node.inputs = [b, a]
                count += 1
    return count


def _fuse(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Decomposed LayerNorm -> LayerNormalization; erf GELU -> Gelu (where the opset has them)."""
    version = opset_version(graph) or 0
    count = 0
    if version >= 17:
        count += fuse_layer_norm(graph, lambda t: shapes[t].shape)
    if version >= 20:
        count += fuse_gelu(graph)
    return count


def _deduplicate(graph: gs.Graph, shapes: Shapes, max_bytes: int) -> int:
    """Identical initializers -> one; identical nodes on identical inputs -> one."""
    return _dedupe_constants(graph) + _dedupe_nodes(graph)


def _dedupe_constants(graph: gs.Graph) -> int:
    seen: dict[tuple[object, ...], gs.Constant] = {}
    replace: dict[int, gs.Constant] = {}
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant) or is_graph_output(graph, tensor):
            continue
        values = np.asarray(tensor.values)
        key = (values.dtype.str, values.shape, values.tobytes())
        if key in seen:
            replace[id(tensor)] = seen[key]
        else:
            seen[key] = tensor
    for node in graph.nodes:
        if any(id(t) in replace for t in node.inputs):
            node.inputs = [replace.get(id(t), t) for t in node.inputs]
    return len(replace)


def _dedupe_nodes(graph: gs.Graph) -> int:
    seen: dict[tuple[object, ...], gs.Node] = {}
    count = 0
    for node in list(graph.nodes):
        if node.op in NOT_EVALUABLE or _has_subgraph(node) or not node.outputs:
            continue
        key = (
            node.op,
            node.domain,
            repr(sorted(node.attrs.items())),
            tuple(id(t) for t in node.inputs),
        )
        first = seen.get(key)
        if first is None or len(first.outputs) != len(node.outputs):
            seen.setdefault(key, node)
            continue
        if any(is_graph_output(graph, t) for t in node.outputs):
            continue
        for mine, theirs in zip(node.outputs, first.outputs, strict=True):
            for reader in list(mine.outputs):
                reader.inputs = [theirs if t is mine else t for t in reader.inputs]
        count += 1
    return count


_REWRITES: tuple[tuple[str, Rewrite], ...] = (
    ("constants_to_initializers", _constants_to_initializers),
    ("shape_folded", _fold_known_values),
    ("targets_folded", _symbolic_targets),
    ("folded", _fold_constants),
    ("noops_removed", _remove_noops),
    ("operands_reordered", _canonical_operands),
    ("fused", _fuse),
    ("deduplicated", _deduplicate),
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


def _detach(node: gs.Node) -> None:
    node.inputs.clear()
    node.outputs.clear()


def _is_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant) or not tensor.name


def _has_subgraph(node: gs.Node) -> bool:
    return any(isinstance(v, gs.Graph) for v in node.attrs.values())


def _static_bytes(info: Info) -> int:
    if info.shape is None or info.dtype is None:
        return 0
    size = product(info.shape)
    return size * info.dtype.itemsize if isinstance(size, int) else 0


def _input_bytes(tensor: gs.Tensor, values: Mapping[int, np.ndarray]) -> int:
    if isinstance(tensor, gs.Constant):
        return int(np.asarray(tensor.values).nbytes)
    value = values.get(id(tensor))
    return 0 if value is None else int(value.nbytes)


def _unique(graph: gs.Graph, name: str) -> str:
    names = graph.tensors().keys()
    candidate, index = name, 0
    while candidate in names:
        index += 1
        candidate = f"{name}_{index}"
    return candidate


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
