"""Which output budgets and `eval` score: the one named with --embedding, never a silent pick."""

import numpy as np
import pytest
from commands import nlpress

from nlpress.cli import EXIT_OK, EXIT_USAGE
from nlpress.compiler import Calibration, optimize
from nlpress.ir import load_model, save_model
from nlpress.ir.embedding import KEY, EmbeddingOutputError
from nlpress.ir.verify import run
from nlpress.passes.calibration import pooled_cosine

AMBIGUOUS = (
    "the model has 2 floating-point outputs shaped as token embeddings [batch, sequence, "
    "hidden] (last_hidden_state, early); name the embedding with --embedding NAME"
)
QUANTIZE = "quantize-insert{calibration=minmax budget-cosine=0.5}"
PRUNE_LAST = "prune-sparsify{sparsity=0.9 exclude=layer.0/ budget-cosine=0.5}"  # `early` stays


@pytest.fixture(scope="module")
def two_states(tiny_bert_path, tmp_path_factory):
    """bert-tiny-random that also outputs its first layer's attention block: `early`."""
    m = load_model(tiny_bert_path)
    early = [n for n in m.graph.nodes if n.op == "LayerNormalization"][1].outputs[0]
    early.name, early.dtype, early.shape = "early", np.float32, ["batch", "sequence", 64]
    m.graph.outputs.append(early)
    return save_model(m, tmp_path_factory.mktemp("two") / "two_states.onnx")


@pytest.fixture(scope="module")
def feeds():
    ids = np.random.default_rng(0).integers(1000, 30000, (8, 12))
    return ({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids},)


def test_two_token_shaped_outputs_need_a_name(two_states, feeds, tmp_path, capsys):
    with pytest.raises(EmbeddingOutputError) as raised:
        optimize(two_states, QUANTIZE, calibration=Calibration(batches=feeds))
    assert str(raised.value) == AMBIGUOUS
    out = tmp_path / "q.onnx"
    argv = ["opt", two_states, "-p", QUANTIZE, "--tokenizer", "bert-tiny-random", "-o", out]
    assert nlpress(*argv, "--calibration-text", __file__) == EXIT_USAGE
    assert capsys.readouterr().err == f"nlpress: error: {AMBIGUOUS}\n"
    assert not out.exists()


@pytest.mark.parametrize("name", ["early", "last_hidden_state"])
def test_the_budget_scores_the_named_output(two_states, feeds, name):
    calibration = Calibration(batches=feeds)
    result = optimize(two_states, PRUNE_LAST, calibration=calibration, embedding=name)
    assert result.model.metadata[KEY] == name
    reached = result.records[0].stats["budget_cosine"]
    teacher, student = run(load_model(two_states), feeds[0]), run(result.model, feeds[0])
    by_output = {
        output: pooled_cosine([teacher[output]], [student[output]], feeds)
        for output in ("early", "last_hidden_state")
    }
    assert reached == pytest.approx(by_output[name], abs=1e-6)
    assert by_output["early"] == pytest.approx(1.0) and by_output["last_hidden_state"] < 0.9999


def test_eval_names_the_output_for_both_models(two_states, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("the first sentence\nand a second, longer sentence\n")
    argv = ["eval", two_states, "--reference", two_states, "--tokenizer", "bert-tiny-random"]
    assert nlpress(*argv, "--text", text) == EXIT_USAGE
    assert capsys.readouterr().err == f"nlpress: error: {AMBIGUOUS}\n"
    assert nlpress(*argv, "--text", text, "--embedding", "early", "--json") == EXIT_OK
    assert '"mean_cosine": 1.0' in capsys.readouterr().out
    assert nlpress(*argv, "--embedding", "missing") == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("nlpress: error: --embedding missing: the model has no output of that")
    assert err.count("\n") == 1
