"""cleanup: drop nodes and initializers no output depends on, then sort nodes topologically."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.passes.base import Pass, PassResult


@dataclass(frozen=True)
class Cleanup(Pass):
    """Remove dead nodes and unused initializers, and sort the nodes topologically.

    Options:
        remove-unused-inputs: Also drop graph inputs that no node reads (this changes the
            model's interface, so it is off by default).
    """

    name = "cleanup"
    remove_unused_inputs: bool = False

    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        """Clean up a copy of `model`."""
        out = model.copy()
        graph = out.graph
        order_before = [id(n) for n in graph.nodes]
        constants_before = _constant_count(graph)
        inputs_before = len(graph.inputs)
        graph.cleanup(remove_unused_graph_inputs=self.remove_unused_inputs).toposort()
        removed_nodes = len(order_before) - len(graph.nodes)
        removed_constants = constants_before - _constant_count(graph)
        removed_loose = len(out.loose_initializers)
        stats = {
            "nodes_removed": removed_nodes,
            "initializers_removed": removed_constants + removed_loose,
            "inputs_removed": inputs_before - len(graph.inputs),
        }
        changed = [id(n) for n in graph.nodes] != order_before or any(stats.values())
        return PassResult(replace(out, loose_initializers=()), changed, stats)


def _constant_count(graph: gs.Graph) -> int:
    return sum(isinstance(t, gs.Constant) for t in graph.tensors().values())
