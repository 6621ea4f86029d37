"""What the planner decides about: a model's units, each unit's choices, and their pipeline text.

A unit is what one decision covers: an FFN pair (neurons removed), an attention block (heads
removed), a lone linear, or an embedding table, found by graph structure (`ir.blocks`). A
choice is a cut (the share of a unit's neurons or heads removed) and a precision for all of
its weights. Choices become pipeline text with per-layer `include` patterns, so a plan is an
ordinary pipeline: prunes first, then int8, then 4-bit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nlpress.ir import Model
from nlpress.ir.blocks import attention_blocks, ffn_pairs
from nlpress.ir.linear import Linear
from nlpress.passes.prune_sparsify.units import prunable_linears, working_copy
from nlpress.passes.quantize_insert.layers import find_tables

PRECISIONS = ("float", "int8", "int4")
# The shares of neurons or heads a unit of each kind may lose; a lone linear or a table keeps
# its shape.
CUTS = {
    "ffn": (0.0, 0.25, 0.5, 0.75),
    "attention": (0.0, 0.25, 0.5),
    "linear": (0.0,),
    "table": (0.0,),
}
# The pass that writes each precision, and the pass and pattern that cut each kind.
# int8 migrates activation outliers into the weights as `-p int8` does (SmoothQuant, 0.8).
PRECISION_STEP = {
    "int8": ("quantize-insert", "smooth=0.8"),
    "int4": ("quantize-weights", "bits=4 group=32"),
}
CUT_PATTERN = {"ffn": "neurons", "attention": "heads"}


@dataclass(frozen=True)
class Unit:
    """One decision's scope.

    Attributes:
        name: Its name (the FFN's down or the block's output linear, the layer, the table).
        kind: ffn, attention, linear or table.
        nodes: The node names its `include` patterns match (a table's Gather readers).
        shapes: Each linear's (k, n) as read (a table's (rows, width)).
        groups: Its neurons or heads (0 for a linear or a table).
    """

    name: str
    kind: str
    nodes: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    groups: int = 0

    def kept(self, cut: float) -> int:
        """Neurons or heads kept at `cut`, as prune-sparsify rounds them."""
        return max(1, round(self.groups * (1.0 - cut)))

    def shapes_at(self, cut: float) -> tuple[tuple[int, int], ...]:
        """Each linear's (k, n) once `cut` of the groups are removed."""
        if not cut or not self.groups:
            return self.shapes
        share = self.kept(cut) / self.groups
        *reads, last = self.shapes
        # Every linear but the last writes the groups (n shrinks); the last reads them (k).
        return (*((k, round(n * share)) for k, n in reads), (round(last[0] * share), last[1]))


@dataclass(frozen=True, order=True)
class Choice:
    """A cut of a unit's groups and the precision of its weights."""

    cut: float = 0.0
    precision: str = "float"

    def __str__(self) -> str:
        cut = f"-{self.cut:g}" if self.cut else ""
        return f"{self.precision}{cut}"


def find_units(model: Model) -> list[Unit]:
    """The model's units in graph order: FFN pairs, attention blocks, other linears, tables."""
    graph = working_copy(model, with_shapes=True).graph
    layers = prunable_linears(graph)
    units: list[Unit] = []
    for pair in ffn_pairs(graph, layers):
        units.append(_unit(pair.name, "ffn", pair.linears(), pair.width))
    for block in attention_blocks(graph, layers):
        units.append(_unit(block.name, "attention", block.linears(), block.heads))
    grouped = {node for unit in units for node in unit.nodes}
    units += [_unit(lin.name, "linear", (lin,)) for lin in layers if lin.name not in grouped]
    for table in find_tables(graph):
        rows, width = table.constant.values.shape
        readers = tuple(n.name for n in table.readers)
        units.append(Unit(table.constant.name, "table", readers, ((int(rows), int(width)),)))
    return units


def _unit(name: str, kind: str, linears: Sequence[Linear], groups: int = 0) -> Unit:
    return Unit(
        name, kind, tuple(lin.name for lin in linears), tuple(lin.shape for lin in linears), groups
    )


def choices(unit: Unit) -> list[Choice]:
    """Every choice a unit offers: each cut of its kind at each precision."""
    return [Choice(cut, p) for cut in CUTS[unit.kind] for p in PRECISIONS]


def pipeline_text(plan: Mapping[Unit, Choice], head: str = "fold", tail: str = "cleanup") -> str:
    """The plan as pipeline text: `head`, one prune per kind and cut, int8, 4-bit, `tail`."""
    steps = [head] if head else []
    for kind, pattern in CUT_PATTERN.items():
        for cut in sorted({c.cut for u, c in plan.items() if u.kind == kind and c.cut}):
            nodes = [n for u, c in plan.items() if u.kind == kind and c.cut == cut for n in u.nodes]
            steps.append(_step("prune-sparsify", f"pattern={pattern} sparsity={cut:g}", nodes))
    for precision, (name, options) in PRECISION_STEP.items():
        nodes = [n for u, c in plan.items() if c.precision == precision for n in u.nodes]
        if nodes:
            steps.append(_step(name, options, nodes))
    return ",".join([*steps, tail] if tail else steps)


def _step(name: str, options: str, nodes: Sequence[str]) -> str:
    include = "include=" + ",".join(literal(n) for n in nodes)
    return f"{name}{{{' '.join(filter(None, (options, include)))}}}"


def literal(name: str) -> str:
    """A regex matching exactly `name`, with no character the pipeline text splits on."""
    return "^" + re.sub(r"\\?[\s,{}\"]", ".", re.escape(name)) + "$"
