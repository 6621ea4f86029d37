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


pytestmark = pytest.mark.conformance


def _close(want: np.ndarray, got: np.ndarray) -> bool:
    want, got = np.asarray(want), np.asarray(got)
    if want.shape != got.shape:
        return False
    if want.dtype.kind in "fc":
        close = np.allclose(want, got.astype(want.dtype), rtol=1e-4, atol=1e-4, equal_nan=True)
        return bool(close)
    return bool(np.array_equal(want, got))


def _matches(case) -> bool:
    """ONNX's expected outputs, or a clear refusal (PreconditionError, which propagates)."""
    inputs, expected = case.data_sets[0]
    proto = case.model
    names = [i.name for i in proto.graph.input]
    net = TorchGraph(Model.from_onnx(proto), ())
    feeds = {n: torch.from_numpy(np.array(v)) for n, v in zip(names, inputs, strict=False)}
    got = net(feeds)
    return len(got) == len(expected) and all(
        _close(want, have.detach().numpy()) for want, have in zip(expected, got, strict=True)
    )


def test_every_node_case_matches_onnx_or_is_refused():
    """Each case of the ops TorchGraph runs: ONNX's outputs, or one clear refusal.

    The cases are collected inside the test (collecting them costs seconds), so a default run,
    which deselects conformance, does not pay for them.
    """
    matched, refused, wrong = 0, 0, []
    for case in _cases():
        try:
            if _matches(case):
                matched += 1
            else:
                wrong.append(case.name)
        except PreconditionError:
            refused += 1
        except Exception as exc:  # any other error is a wrong case, named
            wrong.append(f"{case.name}: {type(exc).__name__}: {exc}")
    ran = matched + len(wrong)
    assert ran > 300, f"only {ran} cases ran ({refused} refused); the filter lost the others"
    assert not wrong, f"{len(wrong)} of {ran} cases differ from ONNX: {wrong}"
