"""Tuning records: default schedules seed them, builds reuse them, MetaSchedule adds to them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tvm import relax, runtime

from nlpress.ir import Model
from nlpress.ir.progress import reporting
from nlpress.ir.verify import run
from nlpress.targets import get_target, lower, tuning

FEEDS = {
    "x": np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32),
    "ids": np.arange(9, dtype=np.int64).reshape(3, 3),
}


def _static(tiny_model: Model) -> Model:
    """The tiny model with batch fixed at 3 (records are per shape)."""
    proto = tiny_model.to_onnx()
    for value in (*proto.graph.input, *proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 3
    return Model.from_onnx(proto)


def _outputs(executable: object) -> list[np.ndarray]:
    vm = relax.VirtualMachine(executable, runtime.cpu())
    result = vm["main"](runtime.tensor(FEEDS["x"]), runtime.tensor(FEEDS["ids"]))
    return [result[i].numpy() for i in range(len(result))]


def test_seeded_records_are_reused(tiny_model: Model, tmp_path: Path) -> None:
    model, target = _static(tiny_model), get_target("x86")
    tvm_target = tuning.tuning_target(target, 2)
    kernels, _ = lower.cpu_kernels(
        lower.import_onnx(model.to_onnx()), tvm_target, default_schedules=False
    )
    assert tuning.seed_with_defaults(kernels, tvm_target, tmp_path) >= 1
    assert tuning.has_records(tmp_path)
    _, unscheduled = lower.cpu_kernels(
        lower.import_onnx(model.to_onnx()), lower.tvm_target(target), tmp_path,
        default_schedules=False,
    )  # fmt: skip
    assert "fused_matmul_relu" not in unscheduled  # its schedule came from the records
    z, idf = _outputs(lower.build(lower.import_onnx(model.to_onnx()), target, tmp_path))
    expected = run(model, FEEDS)
    np.testing.assert_allclose(z, expected["z"], atol=1e-5)
    np.testing.assert_array_equal(idf, expected["idf"])


def test_a_folder_without_records_builds_with_defaults(
    tiny_model: Model, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="nlpress.targets.lower"):
        lower.build(lower.import_onnx(tiny_model.to_onnx()), get_target("x86"), tmp_path)
    assert "no tuning records" in caplog.text


@pytest.mark.slow
def test_tune_reports_progress_and_stores_records(tiny_model: Model, tmp_path: Path) -> None:
    measured: list[int] = []

    class Recorder:
        def begin(self, label: str, total: int | None) -> Callable[[int], None]:
            assert total == 1
            return measured.append

        def end(self, label: str) -> None:
            pass

    model = _static(tiny_model)
    with reporting(Recorder()):
        tuning.tune_model(model.to_onnx(), get_target("x86"), 1, tmp_path)
    assert sum(measured) == 1
    assert tuning.has_records(tmp_path)
    z, _ = _outputs(lower.build(lower.import_onnx(model.to_onnx()), get_target("x86"), tmp_path))
    np.testing.assert_allclose(z, run(model, FEEDS)["z"], atol=1e-5)
