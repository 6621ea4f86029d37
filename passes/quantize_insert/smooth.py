"""SmoothQuant: move activation range into the per-channel-quantized weights.

A group is the layers linked by a shared input x or a shared weight W (ALBERT's layers share
one weight between the inputs of several layers): s_j = max|x_j|^alpha / max|W_j|^(1 - alpha),
maxima over every input and every weight of the group (W_j: row j); each x becomes x / s and
each weight, once however many layers read it, diag(s) W, which leaves the float model
unchanged. The division is folded into x's producer when it is a LayerNormalization with constant
scale and bias (both divided by s) or a Mul by a constant (the constant divided by s); other
readers of x then read x * s through an inserted Mul. Otherwise a Mul(x, 1 / s) is inserted
before the quantized layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir.graph import (
    fresh_name,
    fresh_node_name,
    is_graph_output,
    producer,
)
from nlpress.passes.quantize_insert.layers import Layer
from nlpress.passes.quantize_ranges import smooth_factors


def smooth_group(
    graph: gs.Graph, group: Sequence[Layer], channel_max: np.ndarray, alpha: float
) -> list[bool]:
    """Divide the group's inputs by s and multiply its weights' rows by s (each weight once).

    `channel_max` is max |x_j| over the group's inputs. Returns, per input, whether the division
    was folded into its producer.
    """
    constants = list({id(layer.weight): layer.weight for layer in group if layer.weight}.values())
    weight_max = np.max([np.max(np.abs(np.asarray(c.values)), axis=1) for c in constants], axis=0)
    factors = smooth_factors(channel_max.astype(np.float64), weight_max.astype(np.float64), alpha)
    names = set(graph.tensors())
    scaled = {id(c): _scaled(c, factors, names) for c in constants}
    for layer in group:
        assert layer.weight is not None
        layer.weight = layer.node.inputs[1] = scaled[id(layer.weight)]
    return [
        _divide(graph, [layer for layer in group if layer.activation is tensor], factors, names)
        for tensor in {id(layer.activation): layer.activation for layer in group}.values()
    ]


def _scaled(constant: gs.Constant, factors: np.ndarray, names: set[str]) -> gs.Constant:
    values = np.asarray(constant.values)
    scaled = (factors[:, None] * values).astype(values.dtype)
    return gs.Constant(fresh_name(names, f"{constant.name}_smooth"), scaled)


def _divide(
    graph: gs.Graph, readers: Sequence[Layer], factors: np.ndarray, names: set[str]
) -> bool:
    """Give `readers` their input divided by `factors`; True if folded into its producer."""
    tensor = readers[0].activation
    if _fold_division(graph, tensor, factors, names):
        ours = {id(layer.node) for layer in readers}
        others = [n for n in tensor.outputs if id(n) not in ours]
        _compensate(graph, tensor, others, factors, names)
        return True
    divided = _mul(graph, tensor, 1.0 / factors, names, "smooth")
    for layer in readers:
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
