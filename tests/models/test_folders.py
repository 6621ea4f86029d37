"""Hugging Face and sentence-transformers folders as MODEL: read, exported once, compiled."""

import json
import shutil

import numpy as np
import pytest
from commands import nlpress as nlpress_cli

import nlpress
from nlpress.cli import EXIT_OK, EXIT_USAGE
from nlpress.ir import UsageError, file_sha256
from nlpress.models import export, folders, zoo
from nlpress.models.folders import read_folder

ST = "sentence_transformers.models"
TEXTS = ["def parse(x): return int(x)", "The driver panics on unload.", "u coming tonight?", "a"]


def _modules(*entries):
    return [
        {"idx": i, "name": str(i), "path": p, "type": f"{ST}.{t}"}
        for i, (t, p) in enumerate(entries)
    ]


def _write(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value) if not isinstance(value, str) else value)


def _hf_files(folder, tokenizer=True):
    _write(folder / "config.json", {"model_type": "bert"})
    _write(folder / "model.safetensors", "weights")
    if tokenizer:
        _write(folder / "tokenizer.json", "{}")


def _pooling(mode, width=32):
    modes = {"pooling_mode_mean_tokens": mode == "mean", "pooling_mode_cls_token": mode == "cls"}
    return {"word_embedding_dimension": width, **modes}


def test_a_hugging_face_folder_is_its_config_weights_and_tokenizer(tmp_path):
    _hf_files(tmp_path)
    found = read_folder(tmp_path)
    assert (found.transformer, found.tokenizer) == (tmp_path, tmp_path / "tokenizer.json")
    assert (found.pooling, found.normalize, found.kind) == (None, False, "Hugging Face")


def test_a_sentence_transformers_folder_names_its_transformer_and_pooling(tmp_path):
    _hf_files(tmp_path / "0_Transformer", tokenizer=False)
    _write(tmp_path / "tokenizer.json", "{}")
    modules = _modules(
        ("Transformer", "0_Transformer"), ("Pooling", "1_Pooling"), ("Normalize", "2")
    )
    _write(tmp_path / "modules.json", modules)
    _write(tmp_path / "1_Pooling" / "config.json", _pooling("cls"))
    _write(tmp_path / "sentence_bert_config.json", {"max_seq_length": 64})  # not the module's
    _write(tmp_path / "0_Transformer" / "sentence_bert_config.json", {"max_seq_length": 256})
    found = read_folder(tmp_path)
    assert found.transformer == tmp_path / "0_Transformer"
    assert found.tokenizer == tmp_path / "tokenizer.json"
    assert (found.pooling, found.normalize, found.max_length) == ("cls", True, 256)
    assert found.kind == "sentence-transformers"


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"config.json": {}}, "no weights (model.safetensors or pytorch_model.bin)"),
        ({"modules.json": []}, "its modules.json has no sentence_transformers.models.Transformer"),
        ({"modules.json": "[", "config.json": {}}, "modules.json: not readable JSON"),
        (
            {
                "modules.json": _modules(("Transformer", ""), ("Pooling", "p")),
                "p/config.json": {"pooling_mode_max_tokens": True},
                "config.json": {},
                "model.safetensors": "w",
            },
            "nlpress pools by the mean or the cls token, one of them; this config asks for "
            "pooling_mode_max_tokens",
        ),
    ],
)
def test_a_folder_missing_a_part_is_one_line(tmp_path, layout, message):
    for name, value in layout.items():
        _write(tmp_path / name, value)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_folder(tmp_path)


def test_the_export_is_keyed_by_the_folders_bytes(tmp_path):
    _hf_files(tmp_path)
    first = folders.content_sha256(read_folder(tmp_path))
    assert folders.content_sha256(read_folder(tmp_path)) == first
    _write(tmp_path / ".git" / "objects" / "pack", "history")  # hidden: not the model's bytes
    assert folders.content_sha256(read_folder(tmp_path)) == first
    (tmp_path / "model.safetensors").write_text("other weights")
    assert folders.content_sha256(read_folder(tmp_path)) != first


def test_a_hub_id_is_not_downloaded(capsys):
    argv = ["compile", "sentence-transformers/all-MiniLM-L6-v2", "-t", "x86", "-o", "out"]
    assert nlpress_cli(*argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == (
        "nlpress: error: sentence-transformers/all-MiniLM-L6-v2: no such file or folder; nlpress "
        "reads local models only (download the model's folder first and give its path)\n"
    )


@pytest.fixture(scope="module")
def tiny_sentence_transformer(tmp_path_factory):
    """A sentence-transformers folder around a 2-layer random BERT: its own transformer folder
    (texts cut to 12 tokens), cls pooling and normalization, MiniLM's vocabulary as vocab.txt
    only (no tokenizer.json)."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("st") / "tiny-st"
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(root / "0_Transformer")
    shutil.copy(export.minilm_weights_dir() / "vocab.txt", root / "0_Transformer" / "vocab.txt")
    _write(root / "0_Transformer" / "tokenizer_config.json", {"do_lower_case": True})
    _write(root / "0_Transformer" / "sentence_bert_config.json", {"max_seq_length": 12})
    modules = _modules(
        ("Transformer", "0_Transformer"), ("Pooling", "1_Pooling"), ("Normalize", "2")
    )
    _write(root / "modules.json", modules)
    _write(root / "1_Pooling" / "config.json", _pooling("cls"))
    return root


def test_a_sentence_transformers_folder_compiles_and_encodes_as_it_does(
    tiny_sentence_transformer, tmp_path
):
    out = tmp_path / "x86"
    argv = ["compile", tiny_sentence_transformer, "-t", "x86", "--pooling", "model", "-o", out]
    assert nlpress_cli(*argv, "-q") == EXIT_OK
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pipeline"].endswith("pool{mode=cls normalize=true}")
    assert manifest["source"]["origin"].endswith("sentence-transformers folder tiny-st")
    assert [i["name"] for i in manifest["inputs"]] == list(export.INPUT_NAMES)
    assert manifest["encoder"]["max_length"] == 12  # the folder's max_seq_length, not 512
    texts = [*TEXTS, "a sentence of more words than the folder's twelve tokens allow it"]
    ours = nlpress.load(out).encode(texts)
    sentence_transformers = pytest.importorskip("sentence_transformers")
    theirs = sentence_transformers.SentenceTransformer(
        str(tiny_sentence_transformer), device="cpu"
    ).encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    made = zoo.folder_entry(tiny_sentence_transformer).tokenizer()
    assert made.is_file() and made.parent == zoo.cache_dir()  # built from vocab.txt, cached


def test_model_pooling_needs_a_model_that_declares_one(capsys, tmp_path):
    argv = ["compile", "bert-tiny-random", "-t", "x86", "--pooling", "model", "-o", tmp_path / "o"]
    assert nlpress_cli(*argv) == EXIT_USAGE
    assert "--pooling model: the model declares no pooling" in capsys.readouterr().err


@pytest.mark.slow
def test_the_packaged_minilm_folder_exports_to_the_zoo_model():
    entry = zoo.folder_entry(export.minilm_weights_dir())
    assert (entry.pooling, entry.normalize) == ("mean", True)
    exported = zoo.cached_export(entry)
    assert file_sha256(exported) == file_sha256(zoo.model_path("minilm-l6"))
