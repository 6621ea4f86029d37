"""Held-out fidelity: calibration text split in two, the rewritten model scored on the rest."""

import json

import numpy as np
import pytest
from graphs import copied_ids_encoder, initializer, model, tensor, weights
from onnx import TensorProto, helper

import nlpress
from nlpress.cli import EXIT_OK, main
from nlpress.compiler import Calibration, calibration_batches
from nlpress.ir import save_model
from nlpress.models import zoo
from nlpress.models.text import (
    HELDOUT_EVERY,
    MIN_HELDOUT_TEXT,
    calibration_sentences,
    split_heldout,
)

KEYS = {"text", "sentences", "mean_cosine", "min_cosine", "per_sentence"}
PRUNE = "prune-sparsify{sparsity=0.5}"


def test_the_split_is_deterministic_and_disjoint():
    sentences = calibration_sentences()
    calibration, held = split_heldout(sentences)
    assert (calibration, held) == split_heldout(list(sentences))
    assert held == sentences[HELDOUT_EVERY - 1 :: HELDOUT_EVERY]
    numbered = list(enumerate(sentences))
    held_at = {i for i, _ in numbered[HELDOUT_EVERY - 1 :: HELDOUT_EVERY]}
    assert calibration == [s for i, s in numbered if i not in held_at]
    assert len(calibration) + len(held) == len(sentences)
    assert not set(held) & set(calibration), "the zoo's text has no repeated sentence"


def test_a_short_text_calibrates_whole():
    short = [f"sentence {i}" for i in range(MIN_HELDOUT_TEXT - 1)]
    assert split_heldout(short) == (short, [])
    calibration, held = split_heldout([*short, "one more"])
    assert len(held) == MIN_HELDOUT_TEXT // HELDOUT_EVERY and len(calibration) >= 16


def test_calibration_feeds_come_from_the_calibration_part():
    batches = calibration_batches(Calibration(), zoo.get("bert-tiny-random"), {})
    rows = sum(len(b["input_ids"]) for b in batches)
    assert rows == len(split_heldout(calibration_sentences())[0])


def test_optimize_reports_heldout_fidelity():
    exact = nlpress.optimize("bert-tiny-random", "O1")
    assert exact.records and exact.model is not None, "the README's use of the result"
    held = split_heldout(calibration_sentences())[1]
    assert exact.heldout is not None and exact.heldout_note is None
    assert exact.heldout.text == "zoo calibration text"
    assert exact.heldout.sentences == len(held) == len(exact.heldout.per_sentence)
    assert exact.heldout.min_cosine == pytest.approx(1.0, abs=1e-6)

    lossy = nlpress.optimize("bert-tiny-random", PRUNE).heldout
    assert lossy is not None
    assert lossy.min_cosine < lossy.mean_cosine < 1 - 1e-6
    assert lossy.min_cosine == pytest.approx(min(lossy.per_sentence))
    assert lossy.mean_cosine == pytest.approx(float(np.mean(lossy.per_sentence)))


def test_a_calibration_file_names_its_heldout_text(tmp_path, capsys):
    text = tmp_path / "domain.txt"
    text.write_text("".join(f"the service restarted after error {i}\n" for i in range(30)))
    out = tmp_path / "o.onnx"
    args = ["opt", "bert-tiny-random", "-p", PRUNE, "-o", out, "--calibration-text", text]
    assert main([str(a) for a in args]) == EXIT_OK
    summary = capsys.readouterr().err
    assert "\n  fidelity   mean cosine 0." in summary
    assert "on 6 held-out sentences (domain.txt), against the source\n" in summary

    feeds = tmp_path / "feeds.npz"
    ids = np.full((4, 8), 1000, np.int64)
    np.savez(feeds, input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=ids * 0)
    result = nlpress.optimize("bert-tiny-random", PRUNE, calibration=Calibration(feeds=str(feeds)))
    assert result.heldout is None
    assert result.heldout_note == "no held-out fidelity: feeds.npz holds feeds, no text"


def test_a_model_without_text_has_no_heldout_fidelity(tiny_bert_path, tmp_path):
    copy = tmp_path / "copy.onnx"  # no longer the zoo's file: no calibration text of its own
    save_model(nlpress.optimize(tiny_bert_path, "identity-elim").model, copy)
    result = nlpress.optimize(copy, "O1")
    assert result.heldout is None and result.heldout_note is None


def test_the_manifest_holds_heldout_fidelity(pruned_artifact):
    manifest = json.loads((pruned_artifact / "manifest.json").read_text())
    assert ",prune-sparsify{" in manifest["pipeline"] and " sparsity=0.5 " in manifest["pipeline"]
    fidelity = manifest["fidelity"]
    heldout = fidelity["heldout"]
    assert set(heldout) == KEYS and "tvm_vs_onnxruntime" in fidelity
    assert heldout["text"] == "zoo calibration text"
    assert heldout["sentences"] == len(heldout["per_sentence"]) > 0
    assert heldout["min_cosine"] <= heldout["mean_cosine"] < 1


def _pooled_encoder():
    """input_ids -> Gather(table) -> ReduceMean over the sequence: only a pooled output."""
    return model(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),
            helper.make_node("ReduceMean", ["tokens"], ["pooled"], axes=[1], keepdims=0),
        ],
        [tensor("input_ids", ["batch", "sequence"], TensorProto.INT64)],
        [tensor("pooled", ["batch", 4])],
        [initializer("table", weights([30522, 4]))],
    )


def _heldout_calibration(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"line {i}\n" for i in range(MIN_HELDOUT_TEXT)))
    return Calibration(str(text), "bert-tiny-random")


def test_a_pooled_embedding_output_is_scored_as_it_is(tmp_path):
    calibration = _heldout_calibration(tmp_path)
    result = nlpress.optimize(_pooled_encoder(), "identity-elim", calibration=calibration)
    assert result.heldout is not None, result.heldout_note
    assert result.heldout.min_cosine == pytest.approx(1.0)


def test_a_model_without_a_float_output_says_why(tmp_path):
    ids = model(
        [helper.make_node("Identity", ["input_ids"], ["ids"])],
        [tensor("input_ids", ["batch", "sequence"], TensorProto.INT64)],
        [tensor("ids", ["batch", "sequence"], TensorProto.INT64)],
    )
    result = nlpress.optimize(ids, "identity-elim", calibration=_heldout_calibration(tmp_path))
    assert result.heldout is None and result.heldout_note is not None
    assert result.heldout_note.startswith("no held-out fidelity: no output of the model (ids) is")
    assert result.heldout_note.endswith("name the embedding with --embedding NAME")


def test_the_float_output_is_scored_after_an_integer_copy_of_the_ids(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"{s}\n" for s in calibration_sentences()[:40]))
    calibration = Calibration(str(text), "bert-tiny-random")
    m = copied_ids_encoder()
    result = nlpress.optimize(m, "quantize-insert{calibration=minmax}", calibration=calibration)
    assert result.heldout is not None, result.heldout_note
    assert result.heldout.sentences == len(split_heldout(calibration_sentences()[:40])[1])
    assert 0.9 < result.heldout.min_cosine <= result.heldout.mean_cosine < 1
