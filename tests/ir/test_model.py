import os

import numpy as np
import onnx
import pytest
from graphs import dense, initializer, weights

from nlpress.ir import ModelLoadError, file_sha256, load_model, load_onnx, save_model, save_onnx
from nlpress.ir import model as model_module
from nlpress.ir.verify import make_feeds, run


def _matmul_proto() -> onnx.ModelProto:
    """One MatMul, and an initializer that nothing reads."""
    proto = dense(["batch", 4], weights([4, 3]), activation=None).to_onnx()
    proto.graph.initializer.append(initializer("unused", weights([2])))
    return proto


def test_round_trip_keeps_graph_metadata_and_loose_initializers(tmp_path):
    proto = _matmul_proto()
    onnx.helper.set_model_props(proto, {"author": "nlpress"})
    path = tmp_path / "m.onnx"
    save_onnx(proto, path)
    model = load_model(path)
    assert [i.name for i in model.loose_initializers] == ["unused"]
    save_model(model, tmp_path / "again.onnx")
    again = load_onnx(tmp_path / "again.onnx")
    assert {p.key: p.value for p in again.metadata_props} == {"author": "nlpress"}
    assert sorted(i.name for i in again.graph.initializer) == ["unused", "w"]
    feeds = make_feeds(proto)
    np.testing.assert_array_equal(run(proto, feeds)["y"], run(again, feeds)["y"])


def test_save_is_atomic_when_serialization_fails(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    save_onnx(_matmul_proto(), path)
    digest = file_sha256(path)

    def explode(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", explode)
    with pytest.raises(RuntimeError):
        save_onnx(_matmul_proto(), path)
    monkeypatch.undo()
    assert file_sha256(path) == digest
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_large_models_keep_weights_in_a_side_file(tmp_path, monkeypatch):
    monkeypatch.setattr(model_module, "_PROTOBUF_LIMIT", 64)
    path = save_onnx(_matmul_proto(), tmp_path / "big.onnx")
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    loaded = load_onnx(path)
    w = next(i for i in loaded.graph.initializer if i.name == "w")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(w), weights([4, 3]))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "no such file"),
        (b"hello, I am not a model\n", "not a readable ONNX model"),
        (b"", "not a valid ONNX model"),
    ],
)
def test_bad_files_fail_with_one_line_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=reason) as info:
        load_onnx(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_file_is_refused(tmp_path):
    good = save_onnx(_matmul_proto(), tmp_path / "good.onnx")
    data = good.read_bytes()
    for cut in (len(data) // 3, len(data) - 7):
        truncated = tmp_path / f"cut{cut}.onnx"
        truncated.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match=str(truncated)):
            load_onnx(truncated)
