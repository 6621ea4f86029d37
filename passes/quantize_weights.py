"""quantize-weights: MatMul(x, W) -> MatMul(x, DQ(W_q, s, z, block)); Gather(T) -> Gather(DQ(T_q)).

Weight-only quantization: activations stay float, and each constant weight is stored as 4- or
8-bit integers with one scale (and, asymmetric, one zero point) per group of `group` values
along its input axis: W[i, j] ~ (W_q[i, j] - z[i // g, j]) s[i // g, j] for a MatMul's W [k, n],
and T[r, h] ~ (T_q[r, h] - z[r, h // g]) s[r, h // g] for an embedding table T [rows, d]
(`ir.qdq.quantize_groups`). The integers sit behind a DequantizeLinear (opset 21 for 4-bit or
blocked ones, to which the model is converted); the lowering keeps them as integers and
unpacks them inside the matmul and gather kernels (`targets/blocked.py`, `targets/panels.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from nlpress.ir import Feeds, Model
from nlpress.ir.graph import fresh_name, fresh_node_name, opset_version
from nlpress.ir.linear import linears
from nlpress.ir.qdq import Groups, quantize_groups
from nlpress.passes.base import Pass, PassResult, PreconditionError
from nlpress.passes.compress.options import (
    check_exclude,
    check_include,
    exclude_option,
    include_option,
    selected,
)
from nlpress.passes.quantize_insert.layers import Table, find_tables, gemm_as_matmul

# 4-bit integers and blocked scales exist in DequantizeLinear from this opset on.
BLOCKED_OPSET = 21
BITS = (4, 8)


@dataclass(frozen=True)
class QuantizeWeights(Pass):
    """Store MatMul/Gemm weights (and embedding tables) as 4- or 8-bit integers in groups.

    Options:
        bits: 4 or 8.
        group: Values per scale along a weight's input axis (a table's row); 0 for one scale
            per output column (per table row).
        symmetric: Signed integers around 0 (no zero point) instead of unsigned ones over each
            group's [min, max].
        clip: Shrink each group's range where that lowers its squared error.
        embeddings: Also quantize the constant tables read by Gather (embeddings).
    """

    name: ClassVar[str] = "quantize-weights"
    tolerance: ClassVar[float | None] = None

    bits: int = 4
    group: int = 32
    symmetric: bool = False
    clip: bool = True
    embeddings: bool = True
    include: tuple[str, ...] = include_option()
    exclude: tuple[str, ...] = exclude_option()

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"bits {self.bits}: expected 4 or 8")
        if self.group < 0 or (self.group and self.group % 2):
            raise ValueError(f"group {self.group}: expected 0 or an even size, e.g. 32")
        check_include(self.include)
        check_exclude(self.name, self.exclude)

    @property
    def opset(self) -> int:
        """The opset the written DequantizeLinear nodes need."""
        return BLOCKED_OPSET if self.bits == 4 or self.group else 13

    def requires(self, model: Model) -> None:
        """Something must be quantizable."""
        if not self._layers(model.graph) and not self._tables(model.graph):
            raise PreconditionError(
                f"{self.name}: the graph has no MatMul/Gemm with a constant 2-D float weight "
                "(nor a constant table read by Gather) to quantize"
            )

    def run(self, model: Model, data: Sequence[Feeds] = ()) -> PassResult:
        """Quantize a copy of `model`'s weights."""
        work = _at_opset(model, self.opset)
        graph = work.graph
        writer = _Writer(graph, self)
        error = []
        layers = self._layers(graph)
        for node in layers:
            if node.op == "Gemm":
                gemm_as_matmul(graph, node)
            weight = node.inputs[1]
            assert isinstance(weight, gs.Constant)
            node.inputs[1], relative = writer.dequantized(weight, axis=0)
            error.append(relative)
        tables = self._tables(graph)
        for table in tables:
            dequantized, relative = writer.dequantized(table.constant, axis=1)
            for reader in table.readers:
                reader.inputs[0] = dequantized
            error.append(relative)
        graph.cleanup().toposort()
        stats = {
            "layers_quantized": float(len(layers)),
            "tables_quantized": float(len(tables)),
            "weight_bytes_before": float(writer.bytes_before),
            "weight_bytes_after": float(writer.bytes_after),
            "relative_error_max": float(max(error, default=0.0)),
        }
        return PassResult(work, bool(layers or tables), stats)

    def _layers(self, graph: gs.Graph) -> list[gs.Node]:
        """The MatMul/Gemm nodes with a constant float weight to quantize."""
        return [linear.node for linear in linears(graph) if self._selected(linear.node)]

    def _tables(self, graph: gs.Graph) -> list[Table]:
        """The embedding tables to quantize (none unless `embeddings`)."""
        if not self.embeddings:
            return []
        return [t for t in find_tables(graph) if all(self._selected(n) for n in t.readers)]

    def _selected(self, node: gs.Node) -> bool:
        return selected(self.include, self.exclude, node)


def _at_opset(model: Model, version: int) -> Model:
    """A copy of `model` at the default domain's opset `version` or newer (ONNX's converter)."""
    if (opset_version(model.graph) or 0) >= version:
        return model.copy()
    try:
        proto = onnx.version_converter.convert_version(model.to_onnx(), version)
    except Exception as exc:  # the converter raises bare RuntimeErrors
        raise PreconditionError(
            f"quantize-weights: 4-bit and grouped weights need opset {version}, and ONNX's "
            f"version converter could not convert the model: {str(exc).splitlines()[0]}"
        ) from exc
    return Model.from_onnx(proto)


class _Writer:
    """Writes DequantizeLinear(W_q, s, z) in place of float constants, one per constant."""

    def __init__(self, graph: gs.Graph, options: QuantizeWeights) -> None:
        self.graph, self.options = graph, options
        self.names = set(graph.tensors())
        self.done: dict[int, tuple[gs.Variable, float]] = {}
        self.bytes_before = self.bytes_after = 0

    def dequantized(self, constant: gs.Constant, axis: int) -> tuple[gs.Variable, float]:
        """The dequantized twin of `constant` grouped along `axis`, and its relative error."""
        if id(constant) not in self.done:
            self.done[id(constant)] = self._write(constant, axis)
        return self.done[id(constant)]

    def _write(self, constant: gs.Constant, axis: int) -> tuple[gs.Variable, float]:
        values = np.asarray(constant.values)
        o = self.options
        group = o.group if o.group and o.group < values.shape[axis] else 0
        groups = quantize_groups(values, o.bits, group, axis, o.symmetric, o.clip)
        base = constant.name
        inputs: list[gs.Tensor] = [
            self._constant(f"{base}_quantized", groups.q),
            self._constant(f"{base}_scale", groups.scale),
        ]
        if groups.zero is not None:
            inputs.append(self._constant(f"{base}_zero_point", groups.zero))
        out = gs.Variable(fresh_name(self.names, f"{base}_dequantized"), dtype=np.float32)
        attrs = {"axis": axis, "block_size": group} if group else {"axis": 1 - axis}
        name = fresh_node_name(self.graph, f"{base}/DequantizeLinear")
        self.graph.nodes.append(gs.Node("DequantizeLinear", name, attrs, inputs, [out]))
        self.bytes_before += values.nbytes
        self.bytes_after += _bytes(groups)
        return out, _relative_error(values, groups)

    def _constant(self, name: str, values: np.ndarray) -> gs.Constant:
        return gs.Constant(fresh_name(self.names, name), values)


def _bytes(groups: Groups) -> int:
    """Bytes stored: 4-bit integers two to a byte."""
    per_value = 0.5 if groups.q.dtype.name in ("int4", "uint4") else 1.0
    zero = 0 if groups.zero is None else int(np.ceil(groups.zero.size * per_value))
    return int(np.ceil(groups.q.size * per_value)) + groups.scale.nbytes + zero


def _relative_error(values: np.ndarray, groups: Groups) -> float:
    """||W - dq(W_q)|| / ||W||."""
    norm = float(np.linalg.norm(values))
    return float(np.linalg.norm(groups.dequantized() - values)) / norm if norm else 0.0
