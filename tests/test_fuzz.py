"""Fuzzing the loaders and the runtime's feed checks: never a signal, never a traceback.

Random bytes and random truncations of a real ONNX file go through the command line; random
truncations and damage of a compiled model.so go through `run`; random feeds (dtype, rank,
dims, values) go to an artifact and to ONNX Runtime through the same checks. Everything runs
in this process, so a crash by a signal ends the test run. Example counts stay small for CI.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import graphs
import numpy as np
import pytest
from commands import nlpress
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from nlpress.cli import EXIT_FAILED, EXIT_OK
from nlpress.compiler import CheckedSession
from nlpress.ir import Model, NlpressError
from nlpress.targets import FeedError, build_artifact, get_target, load

FAST = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _one_clean_line(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and "internal error" not in err and "Traceback" not in err


def _table_model() -> Model:
    """Token ids index a 10-row table; x goes through a MatMul: both dims symbolic."""
    return graphs.model(
        [
            helper.make_node("Gather", ["table", "ids"], ["rows"], name="embed"),
            helper.make_node("ReduceSum", ["rows", "axes"], ["summed"], keepdims=0),
            helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
        ],
        [graphs.tensor("ids", ["batch", "n"], TensorProto.INT64), graphs.tensor("x", ["batch", 8])],
        [graphs.tensor("summed", ["batch", 4]), graphs.tensor("y", ["batch", 4])],
        [
            graphs.initializer("table", graphs.weights([10, 4])),
            graphs.initializer("axes", np.array([1], np.int64)),
            graphs.initializer("W", graphs.weights([8, 4], seed=1)),
        ],
    )


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "art"
    return build_artifact(_table_model(), get_target("x86"), out, manifest={"pipeline": "fold"})


@pytest.fixture(scope="module")
def onnx_bytes(tiny_bert_path: Path) -> bytes:
    return tiny_bert_path.read_bytes()


# --- ONNX files -------------------------------------------------------------------------


@FAST
@given(data=st.binary(max_size=4096))
def test_random_bytes_as_a_model(
    data: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "random.onnx"
    path.write_bytes(data)
    capsys.readouterr()
    code = nlpress("inspect", os.fspath(path))
    err = capsys.readouterr().err
    assert code == EXIT_OK or (code == EXIT_FAILED and _one_clean_line(err)), err


@FAST
@given(fraction=st.floats(0.0, 1.0))
def test_a_truncated_model(
    fraction: float, onnx_bytes: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cut.onnx"
    path.write_bytes(onnx_bytes[: int(len(onnx_bytes) * fraction)])
    out = tmp_path / "out.onnx"
    capsys.readouterr()
    code = nlpress("opt", os.fspath(path), "-p", "cleanup", "-o", os.fspath(out))
    err = capsys.readouterr().err
    if fraction < 1.0:
        assert code == EXIT_FAILED and _one_clean_line(err) and str(path) in err, err
        assert not out.exists()
    assert sorted(os.listdir(tmp_path)) in (["cut.onnx"], ["cut.onnx", "out.onnx"])
    out.unlink(missing_ok=True)


@FAST
@given(position=st.floats(0.0, 1.0), byte=st.integers(0, 255))
def test_a_model_with_a_changed_byte(
    position: float,
    byte: int,
    onnx_bytes: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = bytearray(onnx_bytes[:4096])  # the graph's start: names, nodes, the first tensors
    data[int(position * (len(data) - 1))] = byte
    path = tmp_path / "changed.onnx"
    path.write_bytes(bytes(data) + onnx_bytes[4096:])
    capsys.readouterr()
    code = nlpress("inspect", os.fspath(path))
    err = capsys.readouterr().err
    assert code == EXIT_OK or (code == EXIT_FAILED and _one_clean_line(err)), err


# --- model.so ---------------------------------------------------------------------------

FEEDS = {"ids": np.array([[1, 2]], np.int64), "x": np.ones((1, 8), np.float32)}


def _damaged(artifact: Path, tmp_path: Path, library: bytes, keep_record: bool) -> Path:
    target = tmp_path / "damaged"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(artifact, target)
    (target / "model.so").write_bytes(library)
    if not keep_record:  # a manifest from before the library's size and sha256 were kept
        manifest = json.loads((target / "manifest.json").read_text())
        del manifest["library"]
        (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def _run_artifact(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    for name, array in FEEDS.items():
        np.save(tmp_path / f"{name}.npy", array)
    argv = ["run", os.fspath(folder)]
    argv += [f"--input={name}={tmp_path / f'{name}.npy'}" for name in FEEDS]
    capsys.readouterr()
    code = nlpress(*argv)
    err = capsys.readouterr().err
    assert code == EXIT_FAILED and _one_clean_line(err) and "model.so" in err, err
    return err


@FAST
@given(fraction=st.floats(0.0, 0.9999), keep_record=st.booleans())
def test_a_truncated_library(
    fraction: float,
    keep_record: bool,
    artifact: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    library = (artifact / "model.so").read_bytes()
    folder = _damaged(artifact, tmp_path, library[: int(len(library) * fraction)], keep_record)
    _run_artifact(folder, tmp_path, capsys)


@FAST
@given(position=st.floats(0.0, 1.0), noise=st.binary(min_size=1, max_size=64))
def test_a_library_with_changed_bytes(
    position: float,
    noise: bytes,
    artifact: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    library = bytearray((artifact / "model.so").read_bytes())
    start = int(position * (len(library) - len(noise)))
    changed = library[start : start + len(noise)] != noise
    library[start : start + len(noise)] = noise
    if not changed:
        return
    folder = _damaged(artifact, tmp_path, bytes(library), keep_record=True)
    assert "sha256" in _run_artifact(folder, tmp_path, capsys)


@FAST
@given(data=st.binary(max_size=8192))
def test_random_bytes_as_a_library(
    data: bytes, artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run_artifact(_damaged(artifact, tmp_path, data, keep_record=False), tmp_path, capsys)


# --- feeds ------------------------------------------------------------------------------

DTYPES = [np.int64, np.int32, np.float32, np.float64, np.bool_, np.uint8, np.float16]


@st.composite
def feeds(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Feeds near the model's inputs: often right, sometimes a wrong dtype, rank or value."""
    chosen: dict[str, np.ndarray] = {}
    batch = draw(st.integers(0, 3))
    for name, dtype, tail in (("ids", np.int64, "n"), ("x", np.float32, 8)):
        if draw(st.integers(0, 9)) == 0:
            continue  # a missing feed
        kind = draw(st.sampled_from(DTYPES)) if draw(st.integers(0, 3)) == 0 else dtype
        rank = draw(st.integers(0, 3)) if draw(st.integers(0, 4)) == 0 else 2
        width = draw(st.integers(0, 6)) if tail == "n" else draw(st.sampled_from([8, 8, 8, 7]))
        shape = ([batch, width] + [draw(st.integers(0, 3)) for _ in range(rank)])[:rank]
        values = hnp.from_dtype(np.dtype(kind), allow_nan=True, allow_infinity=True)
        if np.dtype(kind).kind in "iu":
            values = st.integers(-12, 12).map(lambda v, k=kind: np.asarray(v).astype(k))
        chosen[name] = draw(hnp.arrays(kind, shape, elements=values))
    if draw(st.integers(0, 9)) == 0:
        chosen["extra"] = np.zeros(1, np.float32)
    return chosen


@settings(max_examples=60, deadline=None)
@given(given_feeds=feeds())
def test_random_feeds_to_an_artifact_and_to_onnxruntime(
    given_feeds: dict[str, np.ndarray], artifact: Path
) -> None:
    outcomes = []
    for session in (load(artifact), CheckedSession(_table_model())):
        try:
            outputs = session.run(None, given_feeds)
            outcomes.append([np.asarray(o) for o in outputs])
        except FeedError as exc:
            outcomes.append(str(exc))
        except NlpressError as exc:  # ONNX Runtime refused what the checks let through
            pytest.fail(f"ONNX Runtime failed after the checks passed: {exc}")
    ours, theirs = outcomes
    assert type(ours) is type(theirs), outcomes
    if isinstance(ours, str):
        assert ours == theirs  # both runtimes refuse a feed in the same words
    elif all(np.isfinite(v).all() for v in given_feeds.values()):
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
