"""Exact evaluation of constant subgraphs in ONNX Runtime, the same kernels that run the model.

`evaluate(graph, nodes)` runs the given nodes, whose inputs are all constants or outputs of
earlier nodes in the list, as one ONNX Runtime session with graph optimizations off, and returns
every output it could compute. When the batch fails (an op ONNX Runtime lacks, say), each node is
run alone so that one bad node only costs its own results and those of its dependents.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from nlpress.ir.graph import opset_imports

log = logging.getLogger(__name__)

# Ops whose result is not a function of their inputs, or that hold subgraphs.
NOT_EVALUABLE = frozenset(
    [
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "If",
        "Loop",
        "Scan",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceInsert",
        "SequenceAt",
        "SequenceErase",
        "SequenceLength",
        "SplitToSequence",
        "ConcatFromSequence",
        "SequenceMap",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
    ]
)


def evaluate(graph: gs.Graph, nodes: Sequence[gs.Node]) -> dict[int, np.ndarray]:
    """Values of the outputs of `nodes` by tensor id; what could not be computed is absent."""
    if not nodes:
        return {}
    try:
        return _run(graph, nodes)
    except Exception as exc:  # ONNX Runtime raises many types; fall back to one node at a time
        log.debug("batch evaluation failed (%s); evaluating node by node", exc)
    values: dict[int, np.ndarray] = {}
    for node in nodes:
        if not all(
            isinstance(t, gs.Constant) or id(t) in values or not t.name for t in node.inputs
        ):
            continue
        try:
            values.update(_run(graph, [node], values))
        except Exception as exc:  # see above
            log.debug("cannot evaluate %s (%s): %s", node.name, node.op, exc)
    return values


def _run(
    graph: gs.Graph, nodes: Sequence[gs.Node], known: dict[int, np.ndarray] | None = None
) -> dict[int, np.ndarray]:
    known = known or {}
    produced = {id(t) for node in nodes for t in node.outputs}
    initializers: dict[str, onnx.TensorProto] = {}
    for node in nodes:
        for tensor in node.inputs:
            if not tensor.name or id(tensor) in produced or tensor.name in initializers:
                continue
            if isinstance(tensor, gs.Constant):
                initializers[tensor.name] = OnnxExporter.export_tensor_proto(tensor)
            elif id(tensor) in known:
                array = known[id(tensor)]
                initializers[tensor.name] = onnx.numpy_helper.from_array(array, tensor.name)
            else:
                raise ValueError(f"input {tensor.name} of {node.name} is not constant")
    outputs = [t for node in nodes for t in node.outputs if t.name]
    body = onnx.helper.make_graph(
        [OnnxExporter.export_node(node) for node in nodes],
        "evaluate",
        [],
        [onnx.helper.make_empty_tensor_value_info(t.name) for t in outputs],
        list(initializers.values()),
    )
    opsets = opset_imports(graph)
    proto = onnx.helper.make_model_gen_version(body, opset_imports=opsets)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    results = session.run([t.name for t in outputs], {})
    return {
        id(t): np.asarray(v)
        for t, v in zip(outputs, results, strict=True)
        if isinstance(v, np.ndarray)
    }
