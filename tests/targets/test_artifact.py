"""Artifacts from tiny graphs: x86 runs here; arm and cuda are built and inspected."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import graphs
import numpy as np
import pytest
from onnx import helper

from nlpress.ir import Model, UsageError
from nlpress.ir.verify import run
from nlpress.targets import FeedError, build_artifact, get_target, load
from nlpress.targets.bench import compare_with_ort
from nlpress.targets.lower import LoweringError, UnsupportedOpError
from nlpress.targets.runtime import _aligned

FEEDS = {
    "x": np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32),
    "ids": np.arange(9, dtype=np.int64).reshape(3, 3),
}


@pytest.fixture(scope="module")
def x86_artifact(tiny_model: Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("x86") / "artifact"
    return build_artifact(tiny_model, get_target("x86"), out, manifest={"pipeline": "fold"})


def test_x86_artifact_matches_onnxruntime(tiny_model: Model, x86_artifact: Path) -> None:
    assert sorted(os.listdir(x86_artifact)) == [
        "manifest.json", "model.onnx", "model.so", "report.html", "report.json"
    ]  # fmt: skip
    expected = run(tiny_model, FEEDS)
    session = load(x86_artifact)
    z, idf = session.run(None, FEEDS)
    np.testing.assert_allclose(z, expected["z"], atol=1e-5)
    np.testing.assert_array_equal(idf, expected["idf"])
    [only] = session.run(["idf"], FEEDS)
    np.testing.assert_array_equal(only, expected["idf"])


def test_feeds_at_any_alignment_and_stride_run_alike(x86_artifact: Path) -> None:
    """Feeds are lent to the kernels without a copy when 64-byte aligned and contiguous; a
    misaligned or strided one is copied to aligned memory first, and the caller's array is
    never written."""
    session = load(x86_artifact)
    expected = session.run(None, FEEDS)
    raw = np.zeros(FEEDS["x"].nbytes + 64 + 4, dtype=np.uint8)
    start = (-raw.ctypes.data % 64) + 4  # 4 bytes past an aligned address
    misaligned = raw[start : start + FEEDS["x"].nbytes].view(np.float32).reshape(3, 8)
    misaligned[...] = FEEDS["x"]
    strided = np.repeat(FEEDS["ids"], 2, axis=1)[:, ::2]
    assert misaligned.ctypes.data % 64 and not strided.flags.c_contiguous
    before = misaligned.copy()
    for got, want in zip(
        session.run(None, {"x": misaligned, "ids": strided}), expected, strict=True
    ):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(misaligned, before)


def test_outputs_are_lent_and_outlive_the_next_run(x86_artifact: Path) -> None:
    """Outputs are the kernels' own memory (no copy), kept for the caller: a later run with
    other feeds leaves them as they were."""
    session = load(x86_artifact)
    first = session.run(None, FEEDS)
    kept = [a.copy() for a in first]
    other = {name: value * 3 for name, value in FEEDS.items()}
    second = session.run(None, other)
    for got, want, later in zip(first, kept, second, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.flags.writeable and not np.shares_memory(got, later)
    assert not np.array_equal(first[1], second[1])


def test_an_output_that_is_a_feed_is_a_copy(tmp_path: Path) -> None:
    """A feed passed through (a reshape is a view of it) is handed back in memory of its own:
    writing it leaves the feed."""
    model = graphs.model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="view")],
        [graphs.tensor("x", ["batch", 8])],
        [graphs.tensor("y", ["batch", 2, 4])],
        [graphs.initializer("shape", np.array([-1, 2, 4], dtype=np.int64))],
    )
    out = build_artifact(model, get_target("x86"), tmp_path / "a", manifest={"pipeline": "fold"})
    x = _aligned(FEEDS["x"].copy())  # lent to the kernels as it is, not copied first
    [y] = load(out).run(None, {"x": x})
    np.testing.assert_array_equal(y, x.reshape(3, 2, 4))
    y[...] = 0
    np.testing.assert_array_equal(x, FEEDS["x"])


def test_manifest_records_the_interface(x86_artifact: Path) -> None:
    manifest = json.loads((x86_artifact / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["pipeline"] == "fold"  # the caller's field, kept
    assert manifest["target"]["name"] == "x86"
    assert manifest["tvm_version"].startswith("0.27")
    assert manifest["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["batch", 8]},
        {"name": "ids", "dtype": "int64", "shape": ["batch", 3]},
    ]
    assert [o["name"] for o in manifest["outputs"]] == ["z", "idf"]
    fidelity = manifest["fidelity"]["tvm_vs_onnxruntime"]
    assert fidelity["checked"] and fidelity["worst"] < 1e-5
    report = json.loads((x86_artifact / "report.json").read_text())
    assert report["onnx_ops"] == {"Cast": 1, "MatMul": 1, "Relu": 1}


def test_session_describes_inputs_like_onnxruntime(x86_artifact: Path) -> None:
    session = load(x86_artifact)
    [x, ids] = session.get_inputs()
    assert (x.name, x.shape, x.type) == ("x", ["batch", 8], "tensor(float)")
    assert (ids.name, ids.type) == ("ids", "tensor(int64)")
    assert [o.name for o in session.get_outputs()] == ["z", "idf"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": None}, "feeds: missing x; the model's inputs: x, ids"),
        ({"y": FEEDS["x"]}, "feeds: unknown y; the model's inputs: x, ids"),
        ({"x": FEEDS["x"].astype(np.float64)}, "input x: dtype float64, expected float32"),
        ({"x": FEEDS["x"][0]}, r"input x: rank 1 \(shape \[8\]\), expected rank 2 \[batch, 8\]"),
        ({"x": np.zeros((3, 7), np.float32)}, "input x: dim 1 is 7, expected 8"),
        ({"ids": FEEDS["ids"][:2]}, r"input ids: dim 0 \(batch\) is 2, but x gave batch = 3"),
    ],
)
def test_bad_feeds_are_named(x86_artifact: Path, change: dict, message: str) -> None:
    feeds = {**FEEDS, **change}
    feeds = {k: v for k, v in feeds.items() if v is not None}
    with pytest.raises(FeedError, match="^" + message):
        load(x86_artifact).run(None, feeds)


def test_unknown_output_name(x86_artifact: Path) -> None:
    with pytest.raises(FeedError, match="unknown output 'w'; outputs: z, idf"):
        load(x86_artifact).run(["w"], FEEDS)


def test_feed_error_is_a_usage_error() -> None:
    assert issubclass(FeedError, UsageError)


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not an nlpress artifact"):
        load(tmp_path)


def _celu_model() -> Model:
    return graphs.model(
        [helper.make_node("Celu", ["x"], ["y"], name="act")],
        [graphs.tensor("x", [2, 3])],
        [graphs.tensor("y", [2, 3])],
    )


def test_unsupported_op_names_op_and_node(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOpError, match=r"does not support: Celu \(node 'act'\)$"):
        build_artifact(_celu_model(), get_target("x86"), tmp_path / "out", manifest={})
    assert list(tmp_path.iterdir()) == []  # no artifact, no staging folder left


def test_failed_build_keeps_the_old_artifact(x86_artifact: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    shutil.copytree(x86_artifact, out)
    before = (out / "model.so").read_bytes()
    with pytest.raises(LoweringError):
        build_artifact(_celu_model(), get_target("x86"), out, manifest={})
    assert (out / "model.so").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_rebuild_replaces_an_artifact(
    tiny_model: Model, x86_artifact: Path, tmp_path: Path
) -> None:
    out = tmp_path / "artifact"
    shutil.copytree(x86_artifact, out)
    build_artifact(tiny_model, get_target("x86"), out, manifest={"pipeline": "again"})
    assert json.loads((out / "manifest.json").read_text())["pipeline"] == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_a_rebuilt_artifact_loads_its_new_code_in_the_same_process(tmp_path: Path) -> None:
    """The loader hands out the library already loaded from a path: a session of a folder
    compiled again must still run the new library."""
    x = np.ones((2, 4), dtype=np.float32)
    results = []
    for scale in (2.0, 3.0, 2.0):
        model = graphs.dense([2, 4], scale * np.eye(4, dtype=np.float32), activation=None)
        build_artifact(model, get_target("x86"), tmp_path / "a", manifest={"pipeline": "fold"})
        [y] = load(tmp_path / "a").run(None, {"x": x})
        results.append(y)
    np.testing.assert_array_equal(results[0], 2 * x)
    np.testing.assert_array_equal(results[1], 3 * x)
    np.testing.assert_array_equal(results[2], 2 * x)


def test_refuses_a_folder_that_is_not_an_artifact(tiny_model: Model, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an nlpress artifact"):
        build_artifact(tiny_model, get_target("x86"), tmp_path, manifest={})
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_arm_artifact_is_an_aarch64_library(tiny_model: Model, tmp_path: Path) -> None:
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not found: run .ci/setup-arm.sh")
    out = build_artifact(
        tiny_model, get_target("arm", mattr=["dotprod"]), tmp_path / "a", manifest={}
    )
    elf = (out / "model.so").read_bytes()
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["tvm_target"]["mattr"] == ["+neon", "+dotprod"]
    assert manifest["fidelity"]["tvm_vs_onnxruntime"]["checked"] is False


def test_side_by_side_timing_pauses_between_runs(tiny_model: Model, x86_artifact: Path) -> None:
    began = time.perf_counter()
    result = compare_with_ort(x86_artifact, tiny_model, feeds=FEEDS, runs=3, warmup=1, settle=0.05)
    assert time.perf_counter() - began >= 2 * 3 * 0.05
    assert result["settle_s"] == 0.05
    assert result["worst"] < 1e-5
    assert result["nlpress_ms"] > 0 and result["ort_ms"] > 0


def test_token_ids_outside_the_table_are_refused(tmp_path: Path) -> None:
    model = graphs.embedding(graphs.weights([10, 4]), ids=["batch", 3], cast=True)
    out = build_artifact(model, get_target("x86"), tmp_path / "out", manifest={})
    [ids] = json.loads((out / "manifest.json").read_text())["inputs"]
    assert ids["index_range"] == [-10, 9]
    session = load(out)
    inside = {"ids": np.array([[0, 9, -10]], dtype=np.int64)}
    np.testing.assert_array_equal(session.run(None, inside)[0], run(model, inside)["rows"])
    for wrong in (10, -11):
        with pytest.raises(FeedError, match=f"ids: value {wrong} is out of range \\[-10, 9\\]"):
            session.run(None, {"ids": np.array([[1, wrong, 2]], dtype=np.int64)})


def test_expand_to_a_constant_shape_keeps_symbolic_dims(tmp_path: Path) -> None:
    """Expand(mask[batch, sequence, 1], [1, 1, 8]): the form fold leaves for a pooling mask."""
    from onnx import TensorProto

    one = helper.make_tensor("one", TensorProto.INT64, [1], [-1])
    wide = helper.make_tensor("wide", TensorProto.INT64, [3], [1, 1, 8])
    deeper = helper.make_tensor("deeper", TensorProto.INT64, [4], [2, 1, 1, 8])
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["mask", "one"], ["column"]),
            helper.make_node("Cast", ["column"], ["weights"], to=TensorProto.FLOAT),
            helper.make_node("Expand", ["weights", "wide"], ["expanded"]),
            helper.make_node("Mul", ["tokens", "expanded"], ["masked"]),
            helper.make_node("Expand", ["tokens", "deeper"], ["stacked"]),
        ],
        "expand",
        [
            helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "sequence", 8]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [
            helper.make_tensor_value_info("masked", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("stacked", TensorProto.FLOAT, None),
        ],
        initializer=[one, wide, deeper],
    )
    model = Model.from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    session = load(build_artifact(model, get_target("x86"), tmp_path / "x86", manifest={}))
    rng = np.random.default_rng(3)
    for batch, sequence in ((1, 5), (3, 17)):
        feeds = {
            "tokens": rng.standard_normal((batch, sequence, 8)).astype(np.float32),
            "mask": (rng.random((batch, sequence)) < 0.7).astype(np.int64),
        }
        expected = run(model, feeds)
        masked, stacked = session.run(None, feeds)
        np.testing.assert_array_equal(masked, expected["masked"])
        np.testing.assert_array_equal(stacked, expected["stacked"])
        assert stacked.shape == (2, batch, sequence, 8)


def test_softmax_over_a_symbolic_row_reduces_in_lanes(tmp_path: Path) -> None:
    """Attention's masked softmax with symbolic sequence: lowered to lane partials, and exact
    at lengths below, at and above whole vectors, with masked columns."""
    from onnx import TensorProto

    from nlpress.targets import lower

    dims = ["batch", 2, "sequence", "sequence"]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["scores", "mask"], ["masked"]),
            helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        ],
        "softmax",
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, dims),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, "sequence"]),
        ],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, dims)],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = Model.from_onnx(proto)
    kernels, _ = lower.cpu_kernels(lower.import_onnx(proto), lower.tvm_target(get_target("x86")))
    assert any("row_max_lanes" in f.script() for _, f in kernels.functions_items())
    session = load(build_artifact(model, get_target("x86"), tmp_path / "x86", manifest={}))
    rng = np.random.default_rng(5)
    for batch, sequence in ((1, 1), (2, 15), (1, 16), (3, 17), (1, 40)):
        mask = np.where(rng.random((batch, 1, 1, sequence)) < 0.3, np.finfo(np.float32).min, 0)
        mask[..., 0] = 0  # every row keeps a column
        feeds = {
            "scores": rng.standard_normal((batch, 2, sequence, sequence)).astype(np.float32),
            "mask": mask.astype(np.float32),
        }
        (got,) = session.run(None, feeds)
        np.testing.assert_allclose(got, run(model, feeds)["probs"], rtol=1e-5, atol=1e-6)
