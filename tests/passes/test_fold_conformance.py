"""fold on every ONNX backend node test that ONNX Runtime runs: outputs must stay equal."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx.backend.test.case.node import collect_testcases

from nlpress.ir import Model
from nlpress.ir.verify import session
from nlpress.passes.fold import Fold

log = logging.getLogger(__name__)


def _run(proto: onnx.ModelProto, inputs: list[np.ndarray]) -> list[np.ndarray]:
    sess = session(proto)
    names = [i.name for i in sess.get_inputs()]
    return list(sess.run(None, dict(zip(names, inputs, strict=False))))


def _equal(want: object, got: object) -> bool:
    """Equal within 1e-5; 16-bit floats within 1e-3 (ONNX Runtime may pick another fp16 kernel
    when an operand becomes an initializer, a last-bit difference)."""
    if isinstance(want, list) and isinstance(got, list):
        return len(want) == len(got) and all(_equal(w, g) for w, g in zip(want, got, strict=True))
    if not isinstance(want, np.ndarray) or not isinstance(got, np.ndarray):
        return bool(type(want) is type(got))
    if want.shape != got.shape or want.dtype != got.dtype:
        return False
    if want.dtype.kind in "fc":
        tol = 1e-3 if want.dtype.itemsize <= 2 else 1e-5
        return bool(np.allclose(want, got, rtol=tol, atol=tol, equal_nan=True))
    if want.dtype.kind == "V" or (want.dtype.itemsize <= 2 and want.dtype.kind not in "biu"):
        return bool(
            np.allclose(
                want.astype(np.float32),
                got.astype(np.float32),
                rtol=1e-3,
                atol=1e-3,
                equal_nan=True,
            )
        )
    return bool(np.array_equal(want, got))


def fold_case(case: object) -> str:
    """'skipped: why', 'passed', or 'failed: why' for one node test case."""
    proto = case.model  # type: ignore[attr-defined]
    inputs = list(case.data_sets[0][0]) if case.data_sets else []  # type: ignore[attr-defined]
    try:
        expected = _run(proto, inputs)
    except Exception as exc:  # ONNX Runtime cannot run this model: not fold's concern
        return f"skipped: onnxruntime cannot run it ({type(exc).__name__})"
    try:
        round_trip = Model.from_onnx(proto).to_onnx()
        _run(round_trip, inputs)
    except Exception as exc:  # the IR itself (onnx-graphsurgeon) cannot carry this model
        return f"skipped: the IR does not round-trip it ({type(exc).__name__})"
    try:
        folded = Fold().run(Model.from_onnx(proto)).model.to_onnx()
        actual = _run(folded, inputs)
    except Exception as exc:
        return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if len(actual) != len(expected):
        return "failed: output count"
    if not all(_equal(w, g) for w, g in zip(expected, actual, strict=True)):
        return "failed: outputs differ"
    return "passed"


@pytest.mark.conformance
def test_fold_keeps_onnx_node_tests_equal() -> None:
    results: dict[str, str] = {}
    for case in collect_testcases(None):
        if case.kind != "node" or case.model is None:
            continue
        results[case.name] = fold_case(case)
    counts = Counter(r.split(":")[0] for r in results.values())
    reasons = Counter(r for r in results.values() if r.startswith("skipped"))
    log.warning("fold conformance: %s; skip reasons: %s", dict(counts), dict(reasons))
    failed = {name: r for name, r in results.items() if r.startswith("failed")}
    assert counts["passed"] > 1000
    assert not failed, failed
