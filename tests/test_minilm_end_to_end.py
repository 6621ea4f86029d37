"""Issue 2's acceptance sequence on the real model: get, inspect, opt with dumps, eval."""

import json

import pytest

from nlpress.cli import EXIT_OK, main
from nlpress.ir import load_model
from nlpress.ir.verify import compare
from nlpress.models import zoo
from nlpress.models.text import encode, evaluation_pairs, load_tokenizer

pytestmark = pytest.mark.slow


def test_get_inspect_opt_eval(tmp_path, capsys):
    m, o, dumps = tmp_path / "m.onnx", tmp_path / "o.onnx", tmp_path / "d"
    assert main(["models", "get", "minilm-l6", "-o", str(m)]) == EXIT_OK
    capsys.readouterr()
    assert main(["inspect", str(m), "--json"]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert round(summary["parameters"] / 1e6, 1) == 22.7
    assert [(i["name"], i["shape"]) for i in summary["inputs"]] == [
        (name, ["batch", "sequence"]) for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    pipeline = ["-p", "cleanup,identity-elim", "-o", str(o), "--dump-ir", str(dumps)]
    assert main(["opt", str(m), *pipeline]) == EXIT_OK
    assert (dumps / "02-identity-elim.diff").is_file()

    tokenizer = load_tokenizer(str(zoo.get("minilm-l6").tokenizer()))
    pairs = evaluation_pairs()
    feeds = [encode(tokenizer, [a for a, _ in pairs[i : i + 8]]) for i in range(0, 48, 8)]
    assert compare(load_model(m), load_model(o), feeds).worst <= 1e-5

    capsys.readouterr()
    assert main(["eval", str(o), "--reference", str(m), "--json"]) == EXIT_OK
    fidelity = json.loads(capsys.readouterr().out)
    assert fidelity["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert fidelity["recall_at_1"] == fidelity["reference_recall_at_1"]
