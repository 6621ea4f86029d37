"""Sentences in, embeddings out: pooled artifacts, their tokenizer, encode, and run --text."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from commands import nlpress as nlpress_cli
from graphs import copied_ids_encoder

import nlpress
from nlpress.cli import EXIT_OK, EXIT_USAGE
from nlpress.config import load_config
from nlpress.ir import UsageError, load_model
from nlpress.ir.embedding import KEY
from nlpress.ir.verify import session as ort_session
from nlpress.models import zoo
from nlpress.models.text import encode as tokenize
from nlpress.models.text import load_tokenizer
from nlpress.targets import ArtifactError, FeedError
from nlpress.targets.encode import Encoder, encode, plan

TEXTS = [
    "nlpress compiles NLP models.",
    "a",
    "Sentence embeddings come out of the artifact in the order the sentences went in.",
    "",
    "a",
    "Mean pooling over the attention mask.",
]
STATIC = [f"--shape={name}=2x16" for name in ("input_ids", "attention_mask", "token_type_ids")]


@pytest.fixture(scope="module")
def artifacts(tiny_artifact, tmp_path_factory):
    """bert-tiny-random: symbolic, pooled and normalized; static 2x16, unpooled; no tokenizer."""
    root = tmp_path_factory.mktemp("encode")
    static, bare = root / "static", root / "bare"
    args = ["compile", "bert-tiny-random", "-t", "x86"]
    assert nlpress_cli(*args, *STATIC, "-o", static) == EXIT_OK
    other = root / "other.onnx"  # not the zoo's file: no tokenizer is known for it
    assert nlpress_cli("opt", "bert-tiny-random", "-p", "fold", "-o", other) == EXIT_OK
    assert nlpress_cli("compile", other, "-t", "x86", "--pooling", "cls", "-o", bare) == EXIT_OK
    return {"pooled": tiny_artifact, "static": static, "bare": bare}


def _ort_embeddings(texts, normalize, max_length=128, model="bert-tiny-random"):
    """Mean pooling of the zoo model's token embeddings in ONNX Runtime, one text at a time."""
    ort = ort_session(load_model(zoo.model_path(model)))
    tokenizer = load_tokenizer(str(zoo.get(model).tokenizer()))
    rows = []
    for text in texts:
        feeds = tokenize(tokenizer, [text], max_length)
        tokens = ort.run(["last_hidden_state"], feeds)[0].astype(np.float64)
        mask = feeds["attention_mask"][..., None]
        row = (tokens * mask).sum(1)[0] / mask.sum()
        rows.append(row / np.linalg.norm(row) if normalize else row)
    return np.array(rows)


def test_the_artifact_carries_its_tokenizer_and_pooling(artifacts):
    manifest = json.loads((artifacts["pooled"] / "manifest.json").read_text())
    assert manifest["encoder"] == {
        "pooling": "mean",
        "normalize": True,
        "output": "sentence_embedding",
        "tokenizer": "tokenizer.json",
        "max_length": 512,
    }
    assert manifest["pipeline"].endswith(",pool{mode=mean normalize=true}")
    assert manifest["outputs"][-1] == {
        "name": "sentence_embedding",
        "dtype": "float32",
        "shape": ["batch", 64],
    }
    assert manifest["metadata"] == {KEY: "last_hidden_state"}  # the token embeddings
    meta = nlpress.load(artifacts["pooled"]).get_modelmeta().custom_metadata_map
    assert meta == {KEY: "last_hidden_state"}
    carried = (artifacts["pooled"] / "tokenizer.json").read_bytes()
    assert carried == zoo.get("bert-tiny-random").tokenizer().read_bytes()
    static = json.loads((artifacts["static"] / "manifest.json").read_text())["encoder"]
    assert static["pooling"] is None and static["max_length"] == 16
    bare = json.loads((artifacts["bare"] / "manifest.json").read_text())
    assert not (artifacts["bare"] / "tokenizer.json").exists()
    assert bare["encoder"]["tokenizer"] is None and bare["encoder"]["pooling"] == "cls"


def test_encode_matches_mean_pooling_of_the_source_model(artifacts):
    session = nlpress.load(artifacts["pooled"])
    embeddings = session.encode(TEXTS, batch_size=4)
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(embeddings, _ort_embeddings(TEXTS, normalize=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    raw = session.encode(TEXTS, normalize=False)  # pooled here from last_hidden_state
    np.testing.assert_allclose(raw, _ort_embeddings(TEXTS, normalize=False), atol=1e-5)
    assert np.all(np.abs(np.linalg.norm(raw, axis=1) - 1.0) > 0.1)


def test_the_pooled_output_is_numpy_mean_pooling(artifacts):
    session = nlpress.load(artifacts["pooled"])
    tokenizer = load_tokenizer(str(artifacts["pooled"] / "tokenizer.json"))
    feeds = tokenize(tokenizer, TEXTS)
    tokens, pooled = session.run(["last_hidden_state", "sentence_embedding"], feeds)
    mask = feeds["attention_mask"][..., None]
    want = (tokens.astype(np.float64) * mask).sum(1) / mask.sum(1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, want, atol=1e-5)


def test_padding_and_batching_change_no_embedding_and_order_is_kept(artifacts):
    session = nlpress.load(artifacts["pooled"])
    together = session.encode(TEXTS, batch_size=len(TEXTS))  # padded to the longest
    alone = np.concatenate([session.encode([text]) for text in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    order = [2, 0, 5, 1, 3, 4]
    shuffled = session.encode([TEXTS[i] for i in order], batch_size=2)
    np.testing.assert_allclose(shuffled, together[order], atol=1e-5)
    np.testing.assert_array_equal(together[1], together[4])  # the same text twice


def test_a_static_artifact_pads_to_its_length_and_fills_its_batch(artifacts):
    session = nlpress.load(artifacts["static"])
    embeddings = session.encode(TEXTS[:5], batch_size=32)  # batches of exactly 2x16
    assert embeddings.shape == (5, 64)
    want = _ort_embeddings(TEXTS[:5], normalize=False, max_length=16)  # the long one is cut
    np.testing.assert_allclose(embeddings, want, atol=1e-5)
    unit = session.encode(TEXTS[:1], normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit), 1.0, atol=1e-6)


def test_no_tokenizer_is_a_clear_error(artifacts, capsys):
    session = nlpress.load(artifacts["bare"])
    with pytest.raises(ArtifactError, match="carries no tokenizer"):
        session.encode(["a sentence"])
    tokenizer = zoo.get("bert-tiny-random").tokenizer()
    cls = session.encode(["a sentence"], tokenizer=tokenizer)
    tokens = session.run(
        ["last_hidden_state"], tokenize(load_tokenizer(str(tokenizer)), ["a sentence"])
    )
    np.testing.assert_allclose(cls[0], tokens[0][0, 0], atol=1e-6)
    capsys.readouterr()
    assert nlpress_cli("run", artifacts["bare"], "--text", "hi") == EXIT_USAGE
    assert "--text needs --tokenizer" in capsys.readouterr().err


def test_bad_sentences_and_batch_sizes(artifacts):
    session = nlpress.load(artifacts["pooled"])
    with pytest.raises(FeedError, match="a list of sentences"):
        session.encode("one sentence")
    with pytest.raises(FeedError, match="takes strings"):
        session.encode(["fine", 3])
    with pytest.raises(FeedError, match="batch_size"):
        session.encode(["fine"], batch_size=0)
    assert session.encode([]).shape == (0, 64)


def test_run_text_prints_embeddings_and_saves_every_output(artifacts, tmp_path, capsys):
    capsys.readouterr()
    args = ["run", artifacts["pooled"], "--text", TEXTS[0], "--text", TEXTS[2]]
    assert nlpress_cli(*args, "--save", tmp_path / "out") == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0] == "output sentence_embedding: mean-pooled, L2-normalized, in the artifact's graph"
    )
    assert [line[:33] for line in lines[1:]] == [
        "text 1: float32[64] norm 1.000000",
        "text 2: float32[64] norm 1.000000",
    ]
    saved = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert saved == ["last_hidden_state.npy", "pooler_output.npy", "sentence_embedding.npy"]
    embeddings = nlpress.load(artifacts["pooled"]).encode([TEXTS[0], TEXTS[2]])
    np.testing.assert_allclose(
        np.load(tmp_path / "out" / "sentence_embedding.npy"), embeddings, atol=1e-5
    )

    assert nlpress_cli("run", artifacts["static"], "--text", TEXTS[0]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("output last_hidden_state: mean-pooled over the attention mask here")
    assert lines[1].startswith("text 1: float32[64] norm ")
    assert (
        nlpress_cli("run", artifacts["static"], "--text", "a", "--input", "x=y.npy") == EXIT_USAGE
    )


def test_bad_pooling_settings_are_usage_errors(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["compile", "bert-tiny-random", "-t", "x86", "-o", out]
    assert nlpress_cli(*base, "--pooling", "max") == EXIT_USAGE
    assert "invalid choice: 'max'" in capsys.readouterr().err
    assert nlpress_cli(*base, "--normalize") == EXIT_USAGE
    assert "--normalize needs --pooling" in capsys.readouterr().err
    assert nlpress_cli(*base, "-p", "fold,pool", "--pooling", "cls") == EXIT_USAGE
    assert "pools already" in capsys.readouterr().err
    build = tmp_path / "build.toml"
    build.write_text('[build]\npooling = "max"\n')
    assert nlpress_cli(*base, "--config", build) == EXIT_USAGE
    assert "--pooling 'max': expected one of mean, cls" in capsys.readouterr().err
    with pytest.raises(UsageError, match="expected one of mean, cls"):
        nlpress.compile("bert-tiny-random", "x86", out, pooling="sum")
    build.write_text('[build]\nnormalize = "yes"\n')
    with pytest.raises(UsageError, match="normalize is true or false"):
        load_config(build)
    build.write_text('[build]\npooling = "mean"\nnormalize = true\ntokenizer = "tok.json"\n')
    config = load_config(build)
    assert (config.pooling, config.normalize, config.tokenizer) == ("mean", True, "tok.json")
    assert nlpress_cli(*base, "--tokenizer", build) == EXIT_USAGE  # checked before the build
    assert "not a tokenizer.json file" in capsys.readouterr().err
    assert not out.exists()


def test_the_runtime_loads_without_tokenizers_or_onnx(artifacts):
    """A deployment loads the runtime by its file and runs an artifact with numpy and TVM only."""
    runtime = Path(nlpress.targets.runtime.__file__)
    code = (
        "import importlib.util, sys\n"
        "sys.modules['nlpress'] = None  # a deployment without the compiler\n"
        f"spec = importlib.util.spec_from_file_location('runtime', {str(runtime)!r})\n"
        "module = sys.modules['runtime'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        f"session = module.load({str(artifacts['pooled'])!r})\n"
        "assert [o.name for o in session.get_outputs()][-1] == 'sentence_embedding'\n"
        "sys.exit(sorted({'tokenizers', 'onnx'} & set(sys.modules)) != [])\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.slow
def test_encode_on_minilm_matches_sentence_transformers_pooling(tmp_path):
    """all-MiniLM-L6-v2: the artifact's encode against mean pooling of the raw model in ORT."""
    out = tmp_path / "x86"
    artifact = nlpress.compile("minilm-l6", "x86", out, pooling="mean", normalize=True)
    session = nlpress.load(artifact)
    want = _ort_embeddings(TEXTS, normalize=True, model="minilm-l6")
    np.testing.assert_allclose(session.encode(TEXTS, batch_size=4), want, atol=1e-5)
    raw = _ort_embeddings(TEXTS, normalize=False, model="minilm-l6")
    np.testing.assert_allclose(session.encode(TEXTS, normalize=False), raw, atol=1e-5)


def test_bench_compares_a_pooled_artifact_with_its_source(artifacts, capsys):
    capsys.readouterr()
    assert nlpress_cli("bench", artifacts["pooled"], "--runs", "2", "--json") == EXIT_OK
    source = json.loads(capsys.readouterr().out)["vs_source"]
    assert source["model"] == "bert-tiny-random"
    assert sorted(source["max_abs_diff"]) == ["last_hidden_state", "pooler_output"]
    assert source["worst"] < 1e-4


def test_encode_pools_the_float_output_after_an_integer_copy_of_the_ids():
    m = copied_ids_encoder()
    session, tokenizer = ort_session(m), load_tokenizer(str(zoo.get("minilm-l6").tokenizer()))
    assert plan(session, Encoder()).output == "tokens"
    want = []
    for text in TEXTS:  # one sentence at a time: the mean of its tokens under the mask
        found = tokenizer.encode(text)
        [tokens] = session.run(["tokens"], {"input_ids": np.array([found.ids])})
        want.append(tokens[0][np.array(found.attention_mask) == 1].mean(0))
    np.testing.assert_allclose(encode(session, tokenizer, TEXTS), want, atol=1e-5)
