"""What `nlpress inspect` shows: ops, parameters, bytes by dtype, sparsity, inputs and outputs."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from nlpress.ir.model import Model

# Integer constants wider than 8 bits are shape arithmetic and indices, not parameters.
_INDEX_KINDS = (np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64, np.bool_)


def summarize(model: Model) -> dict[str, Any]:
    """A JSON-ready summary of a model."""
    graph = model.graph
    constants = _constants(graph)
    parameters = [v for v in constants if v.dtype.type not in _INDEX_KINDS]
    n_params = int(sum(v.size for v in parameters))
    zeros = int(sum(int(np.count_nonzero(v == 0)) for v in parameters))
    bytes_by_dtype: Counter[str] = Counter()
    for value in constants:
        bytes_by_dtype[str(value.dtype)] += int(value.nbytes)
    return {
        "nodes": len(graph.nodes),
        "ops": dict(sorted(Counter(_op(n) for n in graph.nodes).items())),
        "parameters": n_params,
        "bytes_by_dtype": dict(sorted(bytes_by_dtype.items())),
        "sparsity": zeros / n_params if n_params else 0.0,
        "inputs": [_io(t) for t in graph.inputs],
        "outputs": [_io(t) for t in graph.outputs],
        "opset": {d.domain or "ai.onnx": d.version for d in graph.import_domains or []},
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as text for a terminal."""
    lines = [
        f"nodes       {summary['nodes']}",
        f"parameters  {summary['parameters']:,} ({summary['parameters'] / 1e6:.1f}M)",
        f"sparsity    {summary['sparsity']:.2%}",
        "bytes       "
        + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in summary["bytes_by_dtype"].items()),
    ]
    for kind in ("inputs", "outputs"):
        for io in summary[kind]:
            dims = ",".join(str(d) for d in io["shape"]) if io["shape"] is not None else "?"
            lines.append(f"{kind[:-1]:<11} {io['name']}: {io['dtype']}[{dims}]")
    lines.append("ops         " + ", ".join(f"{op} {n}" for op, n in summary["ops"].items()))
    return "\n".join(lines)


def _constants(graph: gs.Graph) -> list[np.ndarray]:
    values = [np.asarray(t.values) for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    for node in graph.nodes:
        if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
            values.append(np.asarray(node.attrs["value"].values))
    return values


def _op(node: gs.Node) -> str:
    return f"{node.domain}.{node.op}" if node.domain else node.op


def _io(tensor: gs.Tensor) -> dict[str, Any]:
    dtype = np.dtype(tensor.dtype).name if tensor.dtype is not None else None
    shape = None
    if tensor.shape is not None:
        shape = [d if isinstance(d, int) else str(d) for d in tensor.shape]
    return {"name": tensor.name, "dtype": dtype, "shape": shape}
