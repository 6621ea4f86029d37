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


def test_paraphrase_minilm_is_the_packaged_file_unchanged(tmp_path, monkeypatch):
    from nlpress.models import export

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    shipped = export.packaged_file(export.PARAPHRASE_PACKAGE, export.PARAPHRASE_FILE, "x")
    path = zoo.model_path("paraphrase-minilm-l3")
    assert file_sha256(path) == file_sha256(shipped)
    assert zoo.cached_bytes("paraphrase-minilm-l3") == shipped.stat().st_size
    summary = summarize(load_model(path))
    assert round(summary["parameters"] / 1e6, 1) == 17.2
    assert [o["dtype"] for o in summary["outputs"]] == ["int64", "int64", "float32", "float32"]


def test_a_missing_model_package_is_one_line():
    from nlpress.ir import NlpressError
    from nlpress.models import export

    with pytest.raises(NlpressError, match=r"^m needs the package no-such-package: pip install"):
        export.packaged_file("no-such-package", "model.onnx", "m")


def test_models_list_names_size_and_source(tmp_path, monkeypatch, capsys):
    from nlpress.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    zoo.model_path("bert-tiny-random")
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[::2]] == list(zoo.ZOO)
    sources = dict(zip(zoo.ZOO, lines[1::2], strict=True))
    tiny = zoo.cached_bytes("bert-tiny-random")
    assert sources["bert-tiny-random"].split() == [
        f"{tiny / 1e6:.1f}",
        "MB,",
        "cached;",
        *zoo.ZOO["bert-tiny-random"].source.split(),
    ]
    assert sources["minilm-l6"].split()[:3] == ["not", "exported", "yet;"]
