"""What `nlpress inspect` shows: ops, parameters, bytes by dtype, sparsity, inputs and outputs.

Sparsity is shown three ways: `sparsity`, the share of zeros among all float parameters;
`weight_sparsity`, the same over the constant weights of the matmuls only; and `layers`, one
entry per such weight (of MatMul and Gemm, and of the quantized MatMulInteger and
QLinearMatMul; followed back to the constant it is stored as, e.g. int8 behind a
DequantizeLinear) with its dtype, shape, share of zeros, and the tightest N:M pattern (N
nonzeros at most in every M consecutive weights along the reduction axis, M in 4 or 8) that it
satisfies, if its zeros fall in one. Zeros stay in the dense tensors of the artifact
(TVM has no sparse kernel to run them; see `passes.prune_sparsify`), so this is what the
compression did, not what the kernels skip.

`size_summary` is the part of it that manifests record before and after a pipeline: totals,
bytes by dtype, and the stored bytes of each weighted layer (MatMul, Gemm, embedding Gather),
its weight followed back through DequantizeLinear, Transpose, Reshape, Cast and Unsqueeze to
the constants it is stored as (an int8 weight counts its scales and zero points too). Bytes
are the bytes a library stores: 4-bit values two to a byte (numpy holds one in each).
"""

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
        bytes_by_dtype[str(value.dtype)] += stored_bytes(value)
    layers = [layer for node in graph.nodes if (layer := _layer(node))]
    weights = sum(int(np.prod(layer["shape"])) for layer in layers)
    weight_zeros = sum(layer["zeros"] for layer in layers)
    return {
        "nodes": len(graph.nodes),
        "ops": dict(sorted(Counter(_op(n) for n in graph.nodes).items())),
        "parameters": n_params,
        "bytes_by_dtype": dict(sorted(bytes_by_dtype.items())),
        "sparsity": zeros / n_params if n_params else 0.0,
        "weight_sparsity": weight_zeros / weights if weights else 0.0,
        "layers": layers,
        "inputs": [_io(t) for t in graph.inputs],
        "outputs": [_io(t) for t in graph.outputs],
        "opset": {d.domain or "ai.onnx": d.version for d in graph.import_domains or []},
    }


# Types of 4 bits a value, which numpy (ml_dtypes) holds in a byte each.
_HALF_BYTE_KINDS = ("int4", "uint4", "float4_e2m1fn")


def stored_bytes(value: np.ndarray) -> int:
    """The bytes that hold `value` packed: 4-bit types two values to a byte."""
    if value.dtype.name in _HALF_BYTE_KINDS:
        return (int(value.size) + 1) // 2
    return int(value.nbytes)


def size_summary(model: Model) -> dict[str, Any]:
    """Parameters, bytes (in all and by dtype) and stored bytes per weighted layer of a model."""
    full = summarize(model)
    return {
        "nodes": full["nodes"],
        "parameters": full["parameters"],
        "bytes": sum(full["bytes_by_dtype"].values()),
        "bytes_by_dtype": full["bytes_by_dtype"],
        "sparsity": full["sparsity"],
        "layers": {n.name: facts for n in model.graph.nodes if (facts := _layer_bytes(n))},
    }


def _layer_bytes(node: gs.Node) -> dict[str, Any] | None:
    """The stored weight of a MatMul, Gemm or Gather: its dtype, elements and bytes."""
    reads = _WEIGHT_INPUTS.get(node.op, ())
    stored = [_stored(node.inputs[i]) for i in reads if i < len(node.inputs)]
    weights = [s for s in stored if s is not None and s[0].values.ndim >= 2]
    if not weights:
        return None
    weight = np.asarray(weights[0][0].values)
    constants = [c for s in stored if s is not None for c in s[1]]
    return {
        "dtype": str(weight.dtype),
        "parameters": int(weight.size),
        "bytes": sum(stored_bytes(c) for c in constants),
    }


# Which inputs of an op may hold a stored weight: both sides of a MatMul, Gemm's B and bias,
# an embedding Gather's table.
_WEIGHT_INPUTS = {"MatMul": (0, 1), "Gemm": (1, 2), "Gather": (0,)}
_WEIGHT_PATH = {"DequantizeLinear", "Transpose", "Reshape", "Cast", "Unsqueeze"}


def _stored(tensor: gs.Tensor) -> tuple[gs.Constant, list[np.ndarray]] | None:
    """The constant a tensor is stored as, and every constant that rebuilds it; None if none."""
    if isinstance(tensor, gs.Constant):
        return tensor, [np.asarray(tensor.values)]
    node = tensor.inputs[0] if len(tensor.inputs) == 1 else None
    if node is None or node.op not in _WEIGHT_PATH or not node.inputs:
        return None
    data = _stored(node.inputs[0])
    if data is None:
        return None
    extra = [np.asarray(t.values) for t in node.inputs[1:] if isinstance(t, gs.Constant)]
    return data[0], data[1] + extra


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as text for a terminal."""
    lines = [
        f"nodes       {summary['nodes']}",
        f"parameters  {summary['parameters']:,} ({summary['parameters'] / 1e6:.1f}M)",
        f"sparsity    {summary['sparsity']:.2%} of parameters, "
        f"{summary['weight_sparsity']:.2%} of MatMul/Gemm weights",
        "bytes       "
        + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in summary["bytes_by_dtype"].items()),
    ]
    for kind in ("inputs", "outputs"):
        for io in summary[kind]:
            dims = ",".join(str(d) for d in io["shape"]) if io["shape"] is not None else "?"
            lines.append(f"{kind[:-1]:<11} {io['name']}: {io['dtype']}[{dims}]")
    lines.append("ops         " + ", ".join(f"{op} {n}" for op, n in summary["ops"].items()))
    sparse = [layer for layer in summary["layers"] if layer["sparsity"] > 0]
    if sparse:
        lines.append(f"sparse weights ({len(sparse)} of {len(summary['layers'])} layers):")
    for layer in sparse:
        shape = "x".join(str(d) for d in layer["shape"])
        pattern = f", {layer['n_m']}" if layer["n_m"] else ""
        lines.append(f"  {layer['node']} {shape}: {layer['sparsity']:.2%}{pattern}")
    return "\n".join(lines)


def _layer(node: gs.Node) -> dict[str, Any] | None:
    """The stored weight of a matmul node and its sparsity, None when it has no constant one."""
    inputs = _MATMUL_INPUTS.get(node.op)
    if inputs is None or len(node.inputs) <= max(inputs):
        return None
    for other, weight_index in (inputs, inputs[::-1]):
        stored = _stored(node.inputs[weight_index])
        if stored is not None and _stored(node.inputs[other]) is None:
            break
    else:
        return None
    constant = stored[0]
    value = np.asarray(constant.values)
    if value.ndim != 2:
        return None
    zeros = int(value.size - np.count_nonzero(value))
    transposed = node.op == "Gemm" and bool(node.attrs.get("transB", 0))
    reduction = 1 if transposed or weight_index == inputs[0] else 0
    return {
        "node": node.name,
        "weight": constant.name,
        "dtype": str(value.dtype),
        "shape": list(value.shape),
        "zeros": zeros,
        "sparsity": zeros / value.size if value.size else 0.0,
        "n_m": _n_m(value, reduction) if zeros else None,
    }


# (activation-side input, weight-side input) of each matmul op, in the order a weight is
# looked for: the second operand first, as the MatMul of a layer has it.
_MATMUL_INPUTS = {
    "MatMul": (0, 1),
    "Gemm": (0, 1),
    "MatMulInteger": (0, 1),
    "QLinearMatMul": (0, 3),
}


def _n_m(value: np.ndarray, axis: int) -> str | None:
    """The tightest `N:M` (M in 4, 8) that every M consecutive weights along `axis` satisfy."""
    rows = np.moveaxis(value, axis, 0)
    best: tuple[float, str] | None = None
    for m in (4, 8):
        if rows.shape[0] % m:
            continue
        blocks = np.count_nonzero(rows.reshape(rows.shape[0] // m, m, -1), axis=1)
        n = int(blocks.max())
        if n < m and (best is None or n / m < best[0]):
            best = (n / m, f"{n}:{m}")
    return None if best is None else best[1]


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
