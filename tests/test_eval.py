"""eval on the user's own text, with artifacts and models as candidate and reference."""

import json

import numpy as np
import pytest
from commands import nlpress as nlpress_cli

import nlpress
from nlpress.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from nlpress.ir import load_model
from nlpress.ir.verify import session
from nlpress.models import zoo
from nlpress.models.metrics import sentence_embeddings
from nlpress.models.text import load_tokenizer
from nlpress.targets import runtime

SENTENCES = [
    "the scheduler retries a failed job three times before it pages anyone",
    "a null pointer in the parser crashed the nightly build",
    "this is a much longer line about compilers, kernels, registers, caches, vector lanes, "
    "tiling, packing and the many other things a code generator has to get right",
    "we rolled the release back after the latency alarm fired",
]
PAIRS = [
    ("the build failed on the arm runner", "compilation broke on the aarch64 machine"),
    ("the cache hit rate dropped after the deploy", "fewer requests hit the cache once we shipped"),
    ("she merged the fix into main", "the patch landed on the main branch"),
]


@pytest.fixture
def text_files(tmp_path):
    sentences, pairs = tmp_path / "sentences.txt", tmp_path / "pairs.tsv"
    sentences.write_text("\n".join(SENTENCES) + "\n\n")
    pairs.write_text("".join(f"{a}\t{b}\n" for a, b in PAIRS))
    return sentences, pairs


def test_an_artifact_candidate_runs_through_the_runtime(
    pruned_artifact, text_files, capsys, caplog, monkeypatch
):
    runs = []
    run = runtime.Session.run
    monkeypatch.setattr(runtime.Session, "run", lambda s, *a: runs.append(s.path) or run(s, *a))
    args = ["eval", pruned_artifact, "--reference", "bert-tiny-random", "--text", text_files[0]]
    assert nlpress_cli(*args, "--json") == EXIT_OK
    assert set(runs) == {pruned_artifact} and len(runs) == len(SENTENCES)  # batch 1
    assert "line 3 of up to" in caplog.text
    assert "cut to 16, the model's fixed sequence length" in caplog.text
    found = json.loads(capsys.readouterr().out)

    tokenizer = load_tokenizer(str(zoo.get("bert-tiny-random").tokenizer()))
    candidate = sentence_embeddings(nlpress.load(pruned_artifact), tokenizer, SENTENCES, 16)
    reference = sentence_embeddings(
        session(load_model(zoo.model_path("bert-tiny-random")), optimize=True),
        tokenizer,
        SENTENCES,
        16,
    )
    expected = np.sum(candidate * reference, axis=1)
    np.testing.assert_allclose(found["per_sentence"], expected, atol=1e-9)
    assert found["mean_cosine"] == pytest.approx(float(np.mean(expected)))
    assert found["min_cosine"] < 1 - 1e-6, "half the weights pruned: not the reference"
    assert found["sentences"] == len(SENTENCES) and found["recall_at_1"] is None


def test_eval_scores_sentences_and_pairs(pruned_artifact, text_files, capsys):
    sentences, pairs = text_files
    reference = ["--reference", "bert-tiny-random"]
    assert nlpress_cli("eval", pruned_artifact, *reference, "--text", pairs, "--json") == EXIT_OK
    found = json.loads(capsys.readouterr().out)
    assert found["text"] == str(pairs) and found["sentences"] == 2 * len(PAIRS)
    assert 0 <= found["recall_at_1"] <= 1 and -1 <= found["spearman"] <= 1
    assert len(found["per_sentence"]) == 2 * len(PAIRS)
    assert found["distribution"]["p05"] <= found["distribution"]["p50"]

    assert nlpress_cli("eval", "bert-tiny-random", *reference, "--text", sentences) == EXIT_OK
    lines = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert float(lines["mean_cosine"]) == pytest.approx(1.0, abs=1e-6)
    assert lines["sentences"] == str(len(SENTENCES)) and "recall_at_1" not in lines
    assert "per_sentence" not in lines


def test_an_artifact_reference_and_the_default_text(pruned_artifact, capsys):
    args = ["eval", "bert-tiny-random", "--reference", pruned_artifact, "--json"]
    assert nlpress_cli(*args) == EXIT_OK
    found = json.loads(capsys.readouterr().out)
    assert found["text"] == "evaluation text" and found["recall_at_1"] is not None
    assert 0 < found["mean_cosine"] < 1 - 1e-6


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("\n\n", "holds no sentences"),
        ("a\tb\nc\n", "non-empty line 2 is not two tab-separated sentences"),
        ("a\tb\tc\nd\te\n", "non-empty line 1 is not two tab-separated"),
        ("only\tone pair\n", "one pair; retrieval needs at least two"),
    ],
)
def test_bad_text_is_one_line(tmp_path, capsys, content, words):
    text = tmp_path / "text.txt"
    text.write_text(content)
    before = text.read_bytes()
    args = ["eval", "bert-tiny-random", "--reference", "bert-tiny-random", "--text", text]
    assert nlpress_cli(*args) == EXIT_FAILED
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert text.read_bytes() == before


def test_bad_models_are_one_line(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert nlpress_cli("eval", folder, "--reference", "bert-tiny-random") == EXIT_USAGE
    assert "not an nlpress artifact" in capsys.readouterr().err
    assert nlpress_cli("eval", "bert-tiny-random", "--reference", "minilm-l6") == EXIT_FAILED
    err = capsys.readouterr().err
    assert "width 64 and the reference's 384" in err and len(err.strip().splitlines()) == 1
    missing = tmp_path / "missing.txt"
    args = ["eval", "bert-tiny-random", "--reference", "bert-tiny-random", "--text", missing]
    assert nlpress_cli(*args) == EXIT_FAILED
    assert "missing.txt: cannot read sentences" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_of_a_minilm_artifact_on_a_text_file(tmp_path, capsys):
    artifact = nlpress.compile("minilm-l6", "x86", tmp_path / "o1")
    heldout = json.loads((artifact / "manifest.json").read_text())["fidelity"]["heldout"]
    assert heldout["text"] == "zoo calibration text" and heldout["min_cosine"] > 0.9999
    text = tmp_path / "text.txt"
    text.write_text("\n".join(SENTENCES))
    args = ["eval", artifact, "--reference", "minilm-l6", "--text", text, "--json"]
    assert nlpress_cli(*args) == EXIT_OK
    found = json.loads(capsys.readouterr().out)
    assert found["sentences"] == len(found["per_sentence"]) == len(SENTENCES)
    assert found["min_cosine"] > 0.9999, "fp32 O1: the artifact computes the model"
