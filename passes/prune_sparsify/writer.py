"""Writes prune-sparsify's edits into the graph with an undo journal.

`apply` swaps in new constants (never mutating old ones), slices per-channel constants, rewrites
the head counts of attention reshapes, gathers the kept heads' slices of per-head side inputs
(position biases), and forgets the static shapes of the tensors whose width changed. Every change
is journaled so that the budget search can undo it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir.blocks import AttentionBlock, FfnPair
from nlpress.ir.graph import constant_value
from nlpress.ir.linear import Linear
from nlpress.passes.prune_sparsify.edits import Edit

# --- writing edits into the graph ------------------------------------------------------------

Undo = Callable[[], None]


@dataclass
class Writer:
    """Writes edits into a graph, journaling every change so that `undo` restores the graph."""

    graph: gs.Graph
    journal: list[Undo] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._names = set(self.graph.tensors())

    def apply(self, edits: Iterable[Edit]) -> None:
        """Write every edit."""
        for edit in edits:
            for linear, weight, bias in edit.weights:
                self._write_linear(linear, weight, bias)
            if isinstance(edit.unit.structure, FfnPair) and edit.kept is not None:
                self._slice_ffn(edit.unit.structure, edit.kept)
            if isinstance(edit.unit.structure, AttentionBlock) and edit.kept is not None:
                self._rewrite_heads(edit.unit.structure, edit.kept)

    def undo(self) -> None:
        """Restore the graph as it was before the first `apply`."""
        while self.journal:
            self.journal.pop()()

    def _fresh(self, base: str) -> str:
        name, count = base, 0
        while name in self._names:
            count += 1
            name = f"{base}{count}"
        self._names.add(name)
        return name

    def _constant(self, base: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(self._fresh(f"{base}.pruned"), np.ascontiguousarray(value))

    def _set_input(self, node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
        index = next(i for i, t in enumerate(node.inputs) if t is old)
        node.inputs[index] = new
        self.journal.append(lambda: node.inputs.__setitem__(index, old))

    def _forget_shape(self, tensor: gs.Tensor) -> None:
        if isinstance(tensor, gs.Variable) and tensor.shape is not None:
            shape = tensor.shape
            tensor.shape = None
            self.journal.append(lambda: setattr(tensor, "shape", shape))

    def _write_linear(self, linear: Linear, weight: np.ndarray, bias: np.ndarray | None) -> None:
        wm = linear.matmul
        old = wm.weight
        stored = weight.T if wm.transposed else weight
        self._set_input(wm.node, old, self._constant(old.name, stored.astype(old.values.dtype)))
        old_value = linear.bias_value()
        same = bias is not None and old_value is not None and np.array_equal(bias, old_value)
        if bias is not None and linear.bias is not None and not same:
            old_bias = linear.bias
            value = bias.reshape((*old_bias.values.shape[:-1], -1))
            reader = linear.bias_node or wm.node
            new = self._constant(old_bias.name, value.astype(old_bias.values.dtype))
            self._set_input(reader, old_bias, new)
        for node in (wm.node, linear.bias_node):
            if node is not None and linear.shape[1] != weight.shape[1]:
                self._forget_shape(node.outputs[0])

    def _slice_ffn(self, pair: FfnPair, kept: np.ndarray) -> None:
        for node, index in pair.channel_constants:
            old = node.inputs[index]
            value = constant_value(old)
            if value is not None:
                self._set_input(node, old, self._constant(old.name or "channel", value[..., kept]))
        for node in pair.chain:
            for out in node.outputs:
                self._forget_shape(out)

    def _rewrite_heads(self, block: AttentionBlock, kept: np.ndarray) -> None:
        heads = len(kept)
        for node, index, axis in block.per_head:
            self._gather_heads(node, index, axis, kept)
        for split in block.splits:
            self._reshape_dim(split.reshape, -2, heads)
            for node in (*split.between, split.reshape):
                self._forget_shape(node.outputs[0])
        self._reshape_dim(block.merge, -1, heads * block.head_dim)
        self._forget_shape(block.merge.outputs[0])
        for node in block.region:
            for out in node.outputs:
                self._forget_shape(out)

    def _gather_heads(self, node: gs.Node, index: int, axis: int, kept: np.ndarray) -> None:
        """Make `node` read only the kept heads' slices of its side input `index`."""
        side = node.inputs[index]
        indices = self._constant(f"{side.name}.heads", np.asarray(kept, np.int64))
        gathered = gs.Variable(self._fresh(f"{side.name}.kept_heads"), side.dtype)
        gather = gs.Node("Gather", f"{node.name}/kept_heads", {"axis": axis})
        gather.inputs, gather.outputs = [side, indices], [gathered]
        self.graph.nodes.append(gather)
        self.journal.append(lambda: self.graph.nodes.remove(gather))
        self._set_input(node, side, gathered)

    def _reshape_dim(self, reshape: gs.Node, axis: int, size: int) -> None:
        old = reshape.inputs[1]
        target = constant_value(old)
        if target is None or int(target[axis]) <= 0:
            return
        value = np.array(target, dtype=np.int64)
        value[axis] = size
        self._set_input(reshape, old, self._constant(old.name or "shape", value))
