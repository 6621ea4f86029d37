"""Deterministic text dumps of a graph, with weights elided to dtype, shape and a hash, and diffs.

One line per value or node, in graph order, so that two dumps diff line by line:

    input input_ids: int64[batch,sequence]
    const encoder.w: float32[384,384] #1f9a0c3b2d4e
    node /MatMul = MatMul(x, encoder.w) -> (y)
    node /Reshape = Reshape(y, /Const_output_0) -> (z) {allowzero=0}
    output z: float32[batch,sequence,384]
"""

from __future__ import annotations

import difflib
import hashlib

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir.model import Model

_SHORT_LIST = 8


def dump_text(model: Model) -> str:
    """The deterministic text of a model's graph."""
    graph = model.graph
    lines = [_header(graph)]
    lines += [f"input {_describe(t)}" for t in graph.inputs]
    lines += _constants(graph)
    lines += _nodes(graph.nodes, indent="")
    lines += [f"output {_describe(t)}" for t in graph.outputs]
    return "\n".join(lines) + "\n"


def diff_text(before: str, after: str, before_name: str = "a", after_name: str = "b") -> str:
    """A unified diff of two dumps (empty when they are equal)."""
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=before_name,
            tofile=after_name,
            n=1,
        )
    )


def value_digest(values: np.ndarray) -> str:
    """A short, stable hash of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(values)
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:12]


def _header(graph: gs.Graph) -> str:
    domains = ", ".join(
        f"{d.domain or 'ai.onnx'}:{d.version}"
        for d in sorted(graph.import_domains or [], key=lambda d: d.domain)
    )
    return f"model opset={domains or graph.opset}"


def _constants(graph: gs.Graph) -> list[str]:
    tensors = graph.tensors().values()
    constants = [t for t in tensors if isinstance(t, gs.Constant)]
    return [f"const {_describe(c)}" for c in sorted(constants, key=lambda c: c.name)]


def _nodes(nodes: list[gs.Node], indent: str) -> list[str]:
    lines = []
    for node in nodes:
        args = ", ".join(t.name if t.name else "<none>" for t in node.inputs)
        results = ", ".join(t.name for t in node.outputs)
        attrs = " ".join(f"{k}={_attr(v)}" for k, v in sorted(node.attrs.items()))
        op = f"{node.domain}.{node.op}" if node.domain else node.op
        line = f"{indent}node {node.name or '_'} = {op}({args}) -> ({results})"
        lines.append(f"{line} {{{attrs}}}" if attrs else line)
        for key, value in sorted(node.attrs.items()):
            if isinstance(value, gs.Graph):
                lines.append(f"{indent}  subgraph {key}:")
                lines += _nodes(value.nodes, indent + "    ")
    return lines


def _describe(tensor: gs.Tensor) -> str:
    if isinstance(tensor, gs.Constant):
        values = np.asarray(tensor.values)
        kind = f"{tensor.name}: {values.dtype}[{','.join(map(str, values.shape))}]"
        if values.size <= _SHORT_LIST:
            return f"{kind} = {values.ravel().tolist()}"
        return f"{kind} #{value_digest(values)}"
    dtype = np.dtype(tensor.dtype).name if tensor.dtype is not None else "?"
    shape = "?" if tensor.shape is None else ",".join(str(d) for d in tensor.shape)
    return f"{tensor.name}: {dtype}[{shape}]"


def _attr(value: object) -> str:
    if isinstance(value, gs.Constant):
        return _describe(value)
    if isinstance(value, gs.Graph):
        return "<graph>"
    if isinstance(value, np.ndarray):
        return _describe(gs.Constant("", value))
    if isinstance(value, float):
        return repr(float(np.float32(value)))
    if isinstance(value, (list, tuple)) and len(value) > _SHORT_LIST:
        return f"[{len(value)} items]"
    return repr(value)
