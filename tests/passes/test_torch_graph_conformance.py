"""TorchGraph on every ONNX backend node test whose ops it runs: outputs must match ONNX's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx.backend.test.case.node import collect_testcases

from nlpress.ir import Model
from nlpress.passes import torch_graph, torch_ops
from nlpress.passes.base import PreconditionError
from nlpress.passes.torch_graph import TorchGraph


def _implemented() -> set[str]:
    torch_graph.require_torch("the conformance cases")
    return set(torch_ops.ops())


def _cases() -> list[object]:
    return [
        case
        for case in collect_testcases()
        if case.data_sets
        and all(i.type.HasField("tensor_type") for i in case.model.graph.input)
        and all(isinstance(v, np.ndarray) and v.dtype != object for v in case.data_sets[0][0])
        and {n.op_type for n in case.model.graph.node} <= _implemented()
        and all(n.domain in ("", "ai.onnx") for n in case.model.graph.node)
    ]


CASES = _cases()
pytestmark = pytest.mark.conformance


def _close(want: np.ndarray, got: np.ndarray) -> bool:
    want, got = np.asarray(want), np.asarray(got)
    if want.shape != got.shape:
        return False
    if want.dtype.kind in "fc":
        close = np.allclose(want, got.astype(want.dtype), rtol=1e-4, atol=1e-4, equal_nan=True)
        return bool(close)
    return bool(np.array_equal(want, got))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case(case):
    """Either a clear refusal (PreconditionError) or ONNX's expected outputs."""
    inputs, expected = case.data_sets[0]
    proto = case.model
    names = [i.name for i in proto.graph.input]
    try:
        net = TorchGraph(Model.from_onnx(proto), ())
        feeds = {n: torch.from_numpy(np.array(v)) for n, v in zip(names, inputs, strict=False)}
        got = net(feeds)
    except PreconditionError as refusal:
        pytest.skip(str(refusal))
    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        assert _close(want, have.detach().numpy())
