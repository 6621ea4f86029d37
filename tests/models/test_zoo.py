import json

import pytest

from nlpress.ir import UsageError, file_sha256, load_model
from nlpress.ir.summary import summarize
from nlpress.models import zoo


def test_bert_tiny_random_exports_once_into_the_xdg_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = zoo.model_path("bert-tiny-random")
    assert path.parent == tmp_path / "nlpress" / "models"
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["sha256"] == file_sha256(path)
    mtime = path.stat().st_mtime_ns
    assert zoo.model_path("bert-tiny-random") == path
    assert path.stat().st_mtime_ns == mtime, "a valid cached export is reused"

    path.write_bytes(b"damaged")
    zoo.model_path("bert-tiny-random")
    assert file_sha256(path) == record["sha256"], "a damaged cache is exported again"

    summary = summarize(load_model(path))
    assert [i["name"] for i in summary["inputs"]] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    assert summary["inputs"][0]["shape"] == ["batch", "sequence"]


@pytest.mark.slow
def test_minilm_is_the_real_model(minilm_path):
    summary = summarize(load_model(minilm_path))
    assert round(summary["parameters"] / 1e6, 1) == 22.7
    assert summary["outputs"][0] == {
        "name": "last_hidden_state",
        "dtype": "float32",
        "shape": ["batch", "sequence", 384],
    }
    assert summary["opset"]["ai.onnx"] == 17


def test_resolve_takes_paths_and_names(tmp_path):
    assert zoo.resolve(str(tmp_path / "x.onnx")) == (tmp_path / "x.onnx", None)
    with pytest.raises(UsageError, match="no zoo model of that name"):
        zoo.resolve("no-such-model")
