"""Groups of linear layers (`ir.linear`) found by shape of the graph: FFN pairs, attention blocks.

Everything here is matched by identity and by structure, never by tensor or node names:

- An `FfnPair` is `up linear(s) -> per-channel elementwise chain -> down linear`: the chain is made
  of elementwise ops (activations, Mul/Add/...) whose constant operands are scalars or per-channel
  vectors, and every tensor in it is read only inside the chain. Several up linears may feed the
  chain (gated units: `act(x Wg) * (x Wu)`); all must have the down linear's input width.
- An `AttentionBlock` is `Q/K/V linears -> Reshape [.., heads, head_dim] -> (per-head ops:
  Transpose, MatMul, Softmax, masks, scales) -> Reshape [.., heads * head_dim] -> output linear`.
  The head axis is tracked through every op in between. A side input of an elementwise op either
  broadcasts over the heads (size 1 there) or holds one slice per head (size `heads` there, as
  T5's and MPNet's relative position biases do: a pruned block gathers the kept slices); any
  other size, or an op this module does not know, makes the block unrecognized, and the caller
  reports it instead of guessing. Shape ops end the trace: they read sizes, not head values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from nlpress.ir.graph import (
    constant_value,
    consumers,
    is_graph_output,
    opset_version,
    producer,
)
from nlpress.ir.linear import Linear

# Ops that act on each channel (last axis) independently, with numpy broadcasting.
ELEMENTWISE = frozenset(
    {
        "Abs", "Add", "And", "Cast", "Celu", "Clip", "Div", "Dropout", "Elu", "Equal", "Erf",
        "Exp", "FastGelu", "Gelu", "Greater", "HardSigmoid", "HardSwish", "Identity", "IsInf",
        "IsNaN", "LeakyRelu", "Less", "Log", "Max", "Min", "Mish", "Mul", "Neg", "Not", "Or",
        "Pow", "QuickGelu", "Reciprocal", "Relu", "Selu", "Sigmoid", "Sign", "Softplus",
        "Softsign", "Sqrt", "Sub", "Tanh", "ThresholdedRelu", "Where",
    }
)  # fmt: skip
# Elementwise ops that count as the activation between the two linears of an FFN.
ACTIVATIONS = frozenset(
    {
        "Celu", "Elu", "Erf", "FastGelu", "Gelu", "HardSigmoid", "HardSwish", "LeakyRelu",
        "Mish", "QuickGelu", "Relu", "Selu", "Sigmoid", "Softplus", "Softsign", "Tanh",
        "ThresholdedRelu",
    }
)  # fmt: skip
_MAX_CHAIN = 64
SIZES = frozenset({"Shape", "Size"})  # read a tensor's sizes, not its values


def _only_read_by(graph: gs.Graph, tensor: gs.Tensor, allowed: Iterable[gs.Node]) -> bool:
    ids = {id(n) for n in allowed}
    return not is_graph_output(graph, tensor) and all(id(n) in ids for n in consumers(tensor))


# --- FFN pairs -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FfnPair:
    """Up linear(s) -> elementwise chain -> down linear; channels of the chain are prunable.

    Attributes:
        ups: The linears whose outputs enter the chain (usually one; two for gated units).
        chain: The elementwise nodes between them.
        channel_constants: Constant inputs of the chain that hold one value per channel.
        down: The linear that reads the chain's result.
    """

    ups: tuple[Linear, ...]
    chain: tuple[gs.Node, ...]
    channel_constants: tuple[tuple[gs.Node, int], ...]
    down: Linear

    @property
    def width(self) -> int:
        """The number of intermediate channels."""
        return self.down.shape[0]

    @property
    def name(self) -> str:
        """The down linear's name."""
        return self.down.name

    def linears(self) -> tuple[Linear, ...]:
        """Every linear of the pair."""
        return (*self.ups, self.down)


def ffn_pairs(graph: gs.Graph, layers: Sequence[Linear]) -> list[FfnPair]:
    """Every FFN pair of the graph, in graph order of the down linear."""
    by_output = {id(lin.output): lin for lin in layers}
    pairs = []
    for down in layers:
        pair = _ffn_pair(graph, down, by_output)
        if pair is not None:
            pairs.append(pair)
    return pairs


def activation_nodes(graph: gs.Graph) -> list[gs.Node]:
    """The activation nodes of the graph (to count FFNs that were not recognized)."""
    return [n for n in graph.nodes if n.op in ACTIVATIONS]


def _ffn_pair(graph: gs.Graph, down: Linear, by_output: dict[int, Linear]) -> FfnPair | None:
    width = down.shape[0]
    walk = _walk_chain(down.activation, by_output, width)
    if walk is None:
        return None
    chain, ups, constants = walk
    if not ups or not any(n.op in ACTIVATIONS for n in chain):
        return None
    if any(up.shape[1] != width or up is down for up in ups):
        return None
    readers = [*chain, down.matmul.node]
    tensors = [up.output for up in ups] + [t for n in chain for t in n.outputs]
    if not all(_only_read_by(graph, t, readers) for t in tensors):
        return None
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    chain = sorted(chain, key=lambda n: order.get(id(n), 0))
    ups = sorted(ups, key=lambda lin: order.get(id(lin.matmul.node), 0))
    return FfnPair(tuple(ups), tuple(chain), tuple(constants), down)


def _walk_chain(
    start: gs.Tensor, by_output: dict[int, Linear], width: int
) -> tuple[list[gs.Node], list[Linear], list[tuple[gs.Node, int]]] | None:
    chain: dict[int, gs.Node] = {}
    ups: dict[int, Linear] = {}
    constants: list[tuple[gs.Node, int]] = []
    stack = [start]
    seen: set[int] = set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if id(tensor) in by_output:
            ups[id(tensor)] = by_output[id(tensor)]
            continue
        node = producer(tensor)
        if node is None or node.op not in ELEMENTWISE or len(_real_outputs(node)) != 1:
            return None
        if len(chain) >= _MAX_CHAIN:
            return None
        chain[id(node)] = node
        for index, inp in enumerate(node.inputs):
            kind = _constant_kind(inp, width)
            if kind == "scalar":
                continue
            if kind == "channel":
                constants.append((node, index))
            elif kind == "other":
                return None
            else:
                stack.append(inp)
    return list(chain.values()), list(ups.values()), constants


def _real_outputs(node: gs.Node) -> list[gs.Tensor]:
    return [t for t in node.outputs if t.outputs or t.name]


def _constant_kind(tensor: gs.Tensor, width: int) -> str | None:
    """None for a variable; 'scalar', 'channel' ([..., width], ones before) or 'other'."""
    if not tensor.name and not isinstance(tensor, gs.Constant):
        return "scalar"  # an omitted optional input
    value = constant_value(tensor)
    if value is None:
        return None
    if value.size == 1:
        return "scalar"
    if value.ndim >= 1 and value.shape[-1] == width and value.size == width:
        return "channel"
    return "other"


# --- attention blocks ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Split:
    """A linear whose output is reshaped to `[..., heads, head_dim]`.

    Per-channel ops with scalar operands (a query scale) may sit between the two (`between`).
    """

    linear: Linear
    between: tuple[gs.Node, ...]
    reshape: gs.Node
    heads: int
    head_dim: int


@dataclass(frozen=True, eq=False)
class AttentionBlock:
    """Q/K/V splits -> per-head region -> merge Reshape -> output linear.

    Attributes:
        splits: The projections split into heads (Q, K, V in graph order).
        region: The per-head nodes between the splits and the merge.
        merge: The Reshape back to `[..., heads * head_dim]`.
        output: The output projection.
        per_head: Side inputs with one slice per head: (node, input index, head axis < 0).
    """

    splits: tuple[Split, ...]
    region: tuple[gs.Node, ...]
    merge: gs.Node
    output: Linear
    per_head: tuple[tuple[gs.Node, int, int], ...] = ()

    @property
    def heads(self) -> int:
        """The number of heads."""
        return self.splits[0].heads

    @property
    def head_dim(self) -> int:
        """The head size of the output projection's input."""
        return self.output.shape[0] // self.heads

    @property
    def name(self) -> str:
        """The output projection's name."""
        return self.output.name

    def linears(self) -> tuple[Linear, ...]:
        """Every linear of the block."""
        return (*(s.linear for s in self.splits), self.output)


def attention_blocks(graph: gs.Graph, layers: Sequence[Linear]) -> list[AttentionBlock]:
    """Every attention block the head axis can be traced through, in graph order."""
    splits = [s for s in (_split(graph, lin) for lin in layers) if s is not None]
    reach = {id(s.reshape): _forward(graph, s) for s in splits}
    by_node = {id(lin.matmul.node): lin for lin in layers}
    blocks = []
    for group in _components(splits, reach):
        block = _block(graph, group, reach, by_node)
        if block is not None:
            blocks.append(block)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return sorted(blocks, key=lambda b: order.get(id(b.output.matmul.node), 0))


def _split(graph: gs.Graph, linear: Linear) -> Split | None:
    tensor: gs.Tensor = linear.output
    between: list[gs.Node] = []
    while True:
        readers = consumers(tensor)
        if len(readers) != 1 or is_graph_output(graph, tensor):
            return None
        node = readers[0]
        if node.op == "Reshape":
            break
        scalars = all(_constant_kind(t, 0) == "scalar" for t in node.inputs if t is not tensor)
        if node.op not in ELEMENTWISE or not scalars or len(between) >= 4:
            return None
        if len(_real_outputs(node)) != 1:
            return None
        between.append(node)
        tensor = node.outputs[0]
    reshape = node
    if reshape.inputs[0] is not tensor:
        return None
    target = constant_value(reshape.inputs[1])
    n = linear.shape[1]
    if target is None or target.ndim != 1 or len(target) < 3 or int(target[-1]) <= 0:
        return None
    head_dim, heads = int(target[-1]), int(target[-2])
    if heads == -1 and n % head_dim == 0 and -1 not in [int(d) for d in target[:-2]]:
        heads = n // head_dim
    if heads <= 0 or heads * head_dim != n:
        return None
    return Split(linear, tuple(between), reshape, heads, head_dim)


def _forward(graph: gs.Graph, split: Split) -> set[int] | None:
    """Ids of nodes reachable from the split up to merge Reshapes, or None if it leaks out."""
    seen: set[int] = set()
    stack = [split.reshape]
    while stack:
        node = stack.pop()
        for out in node.outputs:
            if is_graph_output(graph, out):
                return None
            for reader in consumers(out):
                if id(reader) in seen or reader.op in SIZES:
                    continue
                seen.add(id(reader))
                if reader.op != "Reshape":
                    stack.append(reader)
                if len(seen) > 4 * _MAX_CHAIN:
                    return None
    return seen


def _components(splits: Sequence[Split], reach: dict[int, set[int] | None]) -> list[list[Split]]:
    groups: list[tuple[set[int], list[Split]]] = []
    for split in splits:
        nodes = reach[id(split.reshape)]
        if nodes is None:
            continue
        joined = [g for g in groups if g[0] & nodes]
        merged_nodes, merged = set(nodes), [split]
        for g in joined:
            merged_nodes |= g[0]
            merged = g[1] + merged
            groups.remove(g)
        groups.append((merged_nodes, merged))
    return [g[1] for g in groups]


def _block(
    graph: gs.Graph,
    group: list[Split],
    reach: dict[int, set[int] | None],
    by_node: dict[int, Linear],
) -> AttentionBlock | None:
    heads = {s.heads for s in group}
    if len(heads) != 1 or len(group) < 2:
        return None
    ids: set[int] = set()
    for s in group:
        ids |= reach[id(s.reshape)] or set()
    nodes = [n for n in graph.nodes if id(n) in ids]
    merges = [n for n in nodes if n.op == "Reshape"]
    region = [n for n in nodes if n.op != "Reshape"]
    if len(merges) != 1 or not any(n.op in ("Softmax", "LogSoftmax") for n in region):
        return None
    count = heads.pop()
    per_head: list[tuple[gs.Node, int, int]] = []
    axes = _trace_heads(graph, group, region, count, per_head)
    if axes is None:
        return None
    merge = merges[0]
    output = _merge_output(graph, merge, axes, count, by_node)
    if output is None:
        return None
    return AttentionBlock(tuple(group), tuple(region), merge, output, tuple(per_head))


def _trace_heads(
    graph: gs.Graph,
    group: list[Split],
    region: list[gs.Node],
    heads: int,
    per_head: list[tuple[gs.Node, int, int]],
) -> dict[int, tuple[int, int]] | None:
    """The (negative head axis, rank) of every region tensor, or None if heads would mix.

    Side inputs with one slice per head are appended to `per_head`.
    """
    axes: dict[int, tuple[int, int]] = {}
    for s in group:
        rank = len(constant_value(s.reshape.inputs[1]))  # type: ignore[arg-type]
        axes[id(s.reshape.outputs[0])] = (-2, rank)
    opset = opset_version(graph) or 13
    for node in region:  # graph order is topological
        result = _head_rule(node, axes, opset)
        if result is None:
            result = _per_head_rule(node, axes, heads, per_head)
        if result is None:
            return None
        for out in node.outputs:
            axes[id(out)] = result
    return axes


def _per_head_rule(
    node: gs.Node,
    axes: dict[int, tuple[int, int]],
    heads: int,
    per_head: list[tuple[gs.Node, int, int]],
) -> tuple[int, int] | None:
    """An elementwise op whose side inputs broadcast over heads or hold one slice per head."""
    known = [axes[id(t)] for t in node.inputs if id(t) in axes]
    if node.op not in ELEMENTWISE or not known or len({a for a, _ in known}) != 1:
        return None
    if len(_real_outputs(node)) != 1:
        return None
    axis, rank = known[0][0], max(r for _, r in known)
    found = []
    for index, tensor in enumerate(node.inputs):
        if id(tensor) in axes or _side_ok(tensor, axis):
            continue
        shape = _shape(tensor)
        if shape is None or shape[axis] != heads:
            return None
        found.append((node, index, axis))
        rank = max(rank, len(shape))
    per_head.extend(found)
    return axis, rank


def _head_rule(
    node: gs.Node, axes: dict[int, tuple[int, int]], opset: int
) -> tuple[int, int] | None:
    known = [axes[id(t)] for t in node.inputs if id(t) in axes]
    if not known or len({a for a, _ in known}) != 1:
        return None
    axis, rank = known[0][0], max(r for _, r in known)
    sides = [t for t in node.inputs if id(t) not in axes and (t.name or isinstance(t, gs.Constant))]
    if node.op == "Transpose":
        perm = list(node.attrs.get("perm", range(rank)[::-1]))
        return (perm.index(rank + axis) - rank, rank) if len(perm) == rank else None
    if node.op == "MatMul":
        ok = axis <= -3 and all(_side_ok(t, axis) for t in sides)
        return (axis, rank) if ok else None
    if node.op in ("Softmax", "LogSoftmax"):
        default = -1 if opset >= 13 else 1
        at = int(node.attrs.get("axis", default))
        at = at - rank if at >= 0 else at
        ok = at != axis if opset >= 13 else axis < at
        return (axis, rank) if ok else None
    if node.op in ELEMENTWISE and len(_real_outputs(node)) == 1:
        if not all(_side_ok(t, axis) for t in sides):
            return None
        side_ranks = [len(_shape(t) or ()) for t in sides]
        return axis, max([rank, *side_ranks])
    return None


def _shape(tensor: gs.Tensor) -> tuple[int | str, ...] | None:
    value = constant_value(tensor)
    if value is not None:
        return tuple(value.shape)
    return None if tensor.shape is None else tuple(tensor.shape)


def _side_ok(tensor: gs.Tensor, axis: int) -> bool:
    """Whether a side input broadcasts over the head axis (size 1 there, or too few dims)."""
    shape = _shape(tensor)
    if shape is None:
        return False
    return len(shape) < -axis or shape[axis] == 1


def _merge_output(
    graph: gs.Graph,
    merge: gs.Node,
    axes: dict[int, tuple[int, int]],
    heads: int,
    by_node: dict[int, Linear],
) -> Linear | None:
    source = merge.inputs[0]
    if axes.get(id(source), (0, 0))[0] != -2:
        return None
    target = constant_value(merge.inputs[1])
    rank = axes[id(source)][1]
    if target is None or target.ndim != 1 or len(target) != rank - 1:
        return None
    readers = consumers(merge.outputs[0])
    if len(readers) != 1 or is_graph_output(graph, merge.outputs[0]):
        return None
    output = by_node.get(id(readers[0]))
    if output is None or output.activation is not merge.outputs[0]:
        return None
    if int(target[-1]) not in (-1, output.shape[0]) or output.shape[0] % heads:
        return None
    return output
