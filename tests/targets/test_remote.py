"""Boards behind TVM's RPC tracker, all on 127.0.0.1: run, time and tune there.

The slow tests start a tracker and servers (x86 in this Python, arm under qemu's aarch64 Python)
with `LocalBoards`, which stops every process it started. The fast ones check the one-line
errors that need no board.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import graphs
import numpy as np
import onnx
import pytest
from onnx import helper

from nlpress.cli import EXIT_OK, EXIT_USAGE, main
from nlpress.ir import Model
from nlpress.targets import build_artifact, emulation, get_target, load, tuning
from nlpress.targets.remote import Board, RemoteError, RemoteSession
from nlpress.targets.serving import LocalBoards, free_port

EMULATION_SKIP = emulation.available()
if EMULATION_SKIP is None and shutil.which("aarch64-linux-gnu-gcc") is None:
    EMULATION_SKIP = "aarch64-linux-gnu-gcc not found: run .ci/setup-arm.sh"


@pytest.fixture(scope="module")
def boards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBoards]:
    with LocalBoards(tmp_path_factory.mktemp("boards")) as started:
        yield started


def _artifacts(folder: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """An int8 matmul built for x86 and for arm (+dotprod), with an input and its exact output."""
    proto, x, expected = graphs.exact_qdq_case(13, 68, 56, zero_point=250, seed=8)
    model = Model.from_onnx(proto)
    x86 = build_artifact(model, get_target("x86"), folder / "x86", manifest={})
    arm = build_artifact(model, get_target("arm", mattr=["dotprod"]), folder / "arm", manifest={})
    return x86, arm, x, expected


@pytest.mark.slow
def test_bench_runs_each_artifact_on_a_board_of_its_key(
    boards: LocalBoards, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if EMULATION_SKIP is not None:
        pytest.skip(str(EMULATION_SKIP))
    x86, arm, x, expected = _artifacts(tmp_path)
    boards.add("x86", threads=1)
    boards.add("arm", emulate=True)
    name = load(x86).get_inputs()[0].name
    local = load(x86).run(None, {name: x})[0]
    np.testing.assert_array_equal(local, expected)
    for key, artifact in (("x86", x86), ("arm", arm)):
        with RemoteSession(artifact, boards.board(key)) as session:
            np.testing.assert_array_equal(session.run(None, {name: x})[0], local)
        code = main(["bench", str(artifact), "--rpc", boards.address, "--key", key, "--json"])
        assert code == EXIT_OK
        result = json.loads(capsys.readouterr().out)
        assert result["key"] == key and result["servers"] == 1
        assert result["runs"] == 20 and result["nlpress_ms"] > 0
        assert result["vs_graph"]["worst"] <= 1e-5 * float(np.abs(local).max())
    assert boards.sessions("arm-0") == 2  # one per board session: nothing ran here instead
    with pytest.raises(RemoteError, match="cannot load"):  # an x86 library on the arm board
        RemoteSession(x86, boards.board("arm"))


@pytest.mark.slow
def test_every_output_of_a_model_comes_back_from_the_board(
    boards: LocalBoards, tiny_artifact: Path
) -> None:
    local = load(tiny_artifact)
    feeds = {i.name: np.ones((2, 7), np.int64) for i in local.get_inputs()}
    expected = local.run(None, feeds)
    assert len(expected) >= 2  # token embeddings and the pooled sentence embedding
    boards.add("outputs", threads=1)
    with RemoteSession(tiny_artifact, boards.board("outputs")) as session:
        got = session.run(None, feeds)
        last = session.run([local.get_outputs()[-1].name], feeds)
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(last[0], got[-1])


@pytest.mark.slow
def test_tuning_is_shared_by_the_boards_and_survives_losing_one(
    boards: LocalBoards, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proto = graphs.model(
        [helper.make_node("MatMul", ["x", "W"], ["z"], name="mm")],
        [graphs.tensor("x", [16, 64])],
        [graphs.tensor("z", [16, 48])],
        [graphs.initializer("W", graphs.weights([64, 48]))],
    ).to_onnx()
    onnx.save(proto, tmp_path / "mm.onnx")
    first, second = boards.add("tune", threads=1), boards.add("tune", threads=1)
    killed: list[int] = []

    def kill_second_when_busy() -> None:  # mid-tuning: after it measured a few candidates
        deadline = time.monotonic() + 600
        while boards.sessions(second) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        killed.append(boards.sessions(second))
        boards.kill(second)

    killer = threading.Thread(target=kill_second_when_busy)
    killer.start()
    records = tmp_path / "records"
    code = main(
        [
            *("compile", str(tmp_path / "mm.onnx"), "-t", "x86", "-o", str(tmp_path / "out")),
            *("--tune", "24", "--tuning-records", str(records)),
            *("--rpc", boards.address, "--key", "tune", "-q"),
        ]
    )
    killer.join()
    assert code == EXIT_OK, capsys.readouterr().err
    assert killed and killed[0] >= 4  # the second board measured before it was lost
    assert boards.sessions(first) >= 4
    assert tuning.record_count(records) >= 8
    x = np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)
    weight = onnx.numpy_helper.to_array(proto.graph.initializer[0])
    out = load(tmp_path / "out").run(None, {"x": x})[0]
    np.testing.assert_allclose(out, x @ weight, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_an_arm_build_is_tuned_on_an_arm_board(boards: LocalBoards, tmp_path: Path) -> None:
    if EMULATION_SKIP is not None:
        pytest.skip(str(EMULATION_SKIP))
    proto = graphs.qdq_matmul(16, 64, 48)
    onnx.save(proto, tmp_path / "q.onnx")
    server = boards.add("arm-tune", emulate=True)
    records, out = tmp_path / "records", tmp_path / "arm"
    code = main(
        [
            *("compile", str(tmp_path / "q.onnx"), "-t", "arm", "--mattr", "+dotprod"),
            *("--tune", "4", "--tuning-records", str(records), "-o", str(out), "-q"),
            *("--rpc", boards.address, "--key", "arm-tune"),
        ]
    )
    assert code == EXIT_OK
    assert tuning.record_count(records) >= 4
    assert boards.sessions(server) >= 4  # the seeds and the candidates ran on the board
    x = np.random.default_rng(2).standard_normal((1, 16, 64)).astype(np.float32)
    with RemoteSession(out, boards.board("arm-tune")) as session:
        got = session.run(None, {"x": x})[0]
    host = build_artifact(Model.from_onnx(proto), get_target("x86"), tmp_path / "x86", manifest={})
    expected = load(host).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


@pytest.mark.slow
def test_a_key_without_servers_is_one_line(boards: LocalBoards) -> None:
    with pytest.raises(RemoteError, match=r"no server registered under key 'gpu'.*keys there"):
        Board(boards.host, boards.port, "gpu").request()


def test_no_tracker_is_one_line_in_seconds() -> None:
    began = time.monotonic()
    with pytest.raises(RemoteError, match=r"no RPC tracker at 127\.0\.0\.1"):
        Board("127.0.0.1", free_port(), "arm").request()
    assert time.monotonic() - began < 30  # not TVM's minute of retries


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "{art}", "--rpc", "nohost", "--key", "arm"], "expected the tracker as HOST"),
        (["bench", "{art}", "--rpc", "127.0.0.1:9190"], "--rpc needs --key"),
        (["bench", "{art}", "--key", "arm"], "give --rpc HOST:PORT too"),
        (
            ["bench", "{art}", "--rpc", "127.0.0.1:9", "--key", "a", "--vs-ort"],
            "--vs-ort runs here",
        ),
        (
            ["compile", "{model}", "-t", "x86", "-o", "{out}", "--rpc", "h:1", "--key", "a"],
            "--tune",
        ),
        (["remote", "list", "--tracker", "127.0.0.1:{port}"], "no RPC tracker at"),
    ],
    ids=["address", "no-key", "no-rpc", "vs-ort", "rpc-without-tune", "list-no-tracker"],
)
def test_remote_usage_errors_are_one_line(
    args: list[str],
    message: str,
    tiny_artifact: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(graphs.qdq_matmul(4, 8, 8), model)
    fields = {"art": tiny_artifact, "model": model, "out": tmp_path / "o", "port": free_port()}
    code = main([a.format(**fields) for a in args])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_records_measured_before_a_failure_are_kept(tmp_path: Path) -> None:
    from nlpress.compiler import _removed_on_failure

    kept, empty = tmp_path / "kept", tmp_path / "empty"
    for folder, lines in ((kept, '["a"]\n["b"]\n'), (empty, "")):
        with pytest.raises(RuntimeError), _removed_on_failure(folder):
            folder.mkdir()
            (folder / "database_tuning_record.json").write_text(lines)
            raise RuntimeError("the board was lost")
    assert tuning.record_count(kept) == 2
    assert not empty.exists()
