import json
import subprocess
import sys

import numpy as np
import pytest
from commands import nlpress

from nlpress.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from nlpress.ir import file_sha256, load_model
from nlpress.ir.verify import compare, make_feeds
from nlpress.passes import PASSES


def test_opt_with_dump_ir_keeps_outputs_equal(tiny_bert_path, tmp_path, capsys):
    out, dumps = tmp_path / "o.onnx", tmp_path / "dumps"
    args = ["opt", tiny_bert_path, "-p", "identity-elim,cleanup", "-o", out, "--dump-ir", dumps]
    assert nlpress(*args, "--time-passes", "--verify-each") == EXIT_OK
    assert "total" in capsys.readouterr().err
    before, after = load_model(tiny_bert_path), load_model(out)
    feeds = [make_feeds(before, {"batch": b, "sequence": s}, seed=b) for b, s in [(1, 7), (3, 16)]]
    assert compare(before, after, feeds).worst <= 1e-5
    assert len(after.graph.nodes) < len(before.graph.nodes)
    assert (dumps / "01-identity-elim.diff").is_file() and (dumps / "02-cleanup.txt").is_file()


@pytest.mark.parametrize(
    ("pipeline", "code", "words"),
    [
        ("nosuchpass", EXIT_USAGE, ["unknown pass 'nosuchpass'", *PASSES]),
        ("cleanup{bogus=1}", EXIT_USAGE, ["unknown option 'bogus'", "remove-unused-inputs"]),
    ],
)
def test_bad_pipelines_exit_2_and_say_what_is_valid(
    tiny_bert_path, tmp_path, capsys, pipeline, code, words
):
    digest = file_sha256(tiny_bert_path)
    out = tmp_path / "x.onnx"
    assert nlpress("opt", tiny_bert_path, "-p", pipeline, "-o", out) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert all(w in err for w in words)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert file_sha256(tiny_bert_path) == digest


@pytest.mark.parametrize("cut", [0.5, None])
def test_bad_input_files_exit_1_with_one_line_naming_the_file(
    tiny_bert_path, tmp_path, capsys, cut
):
    bad = tmp_path / "bad.onnx"
    data = tiny_bert_path.read_bytes()
    bad.write_bytes(data[: int(len(data) * cut)] if cut else b"not a model at all")
    digest = file_sha256(bad)
    out = tmp_path / "x.onnx"
    assert nlpress("opt", bad, "-p", "cleanup", "-o", out) == EXIT_FAILED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err
    assert not out.exists()
    assert file_sha256(bad) == digest


def test_wrong_flags_are_usage_errors(tiny_bert_path, tmp_path, capsys):
    assert nlpress("opt", tiny_bert_path, "-o", tmp_path / "x.onnx") == EXIT_USAGE
    assert (
        nlpress(
            "opt",
            tiny_bert_path,
            "-p",
            "cleanup",
            "-o",
            tmp_path / "x.onnx",
            "--shape",
            "input_ids",
        )
        == EXIT_USAGE
    )
    assert nlpress("frobnicate") == EXIT_USAGE
    assert (
        nlpress("opt", "no-such-zoo-model", "-p", "cleanup", "-o", tmp_path / "x.onnx")
        == EXIT_USAGE
    )
    assert list(tmp_path.iterdir()) == []


def test_opt_reads_a_build_file(tiny_bert_path, tmp_path):
    config = tmp_path / "build.toml"
    out = tmp_path / "o.onnx"
    config.write_text(f'[build]\nmodel = "{tiny_bert_path}"\npipeline = "O1"\noutput = "{out}"\n')
    assert nlpress("opt", "--config", config) == EXIT_OK
    assert out.is_file()
    config.write_text('[build]\nmodle = "x"\n')
    assert nlpress("opt", "--config", config) == EXIT_USAGE


def test_inspect_json(tiny_bert_path, capsys):
    assert nlpress("inspect", tiny_bert_path, "--json") == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["inputs"][0] == {
        "name": "input_ids",
        "dtype": "int64",
        "shape": ["batch", "sequence"],
    }
    assert summary["parameters"] > 2_000_000
    assert summary["ops"]["MatMul"] >= 8
    assert summary["bytes_by_dtype"]["float32"] > 8_000_000
    assert 0 < summary["sparsity"] < 0.01  # zero-initialized biases only


def test_diff_of_a_model_with_itself_is_empty(tiny_bert_path, tmp_path, capsys):
    assert nlpress("diff", tiny_bert_path, tiny_bert_path) == EXIT_OK
    assert capsys.readouterr().out == ""
    out = tmp_path / "o.onnx"
    nlpress("opt", tiny_bert_path, "-p", "identity-elim", "-o", out)
    capsys.readouterr()
    assert nlpress("diff", tiny_bert_path, out) == EXIT_OK
    assert "\n-node" in capsys.readouterr().out


def test_eval_of_a_model_against_itself(tiny_bert_path, tmp_path, capsys):
    args = ["eval", tiny_bert_path, "--reference", "bert-tiny-random", "--json"]
    assert nlpress(*args) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert result["recall_at_1"] == result["reference_recall_at_1"]
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(tiny_bert_path.read_bytes())
    assert nlpress("eval", tiny_bert_path, "--reference", copy) == EXIT_OK, "a zoo copy is known"
    nlpress("opt", tiny_bert_path, "-p", "identity-elim", "-o", copy)  # no longer the zoo's file
    capsys.readouterr()
    assert nlpress("eval", tiny_bert_path, "--reference", copy) == EXIT_USAGE
    assert "--tokenizer" in capsys.readouterr().err


def test_passes_and_models(tmp_path, capsys):
    assert nlpress("passes") == EXIT_OK
    listing = capsys.readouterr().out
    assert all(f"{name}: " in listing for name in PASSES)
    assert nlpress("models", "list") == EXIT_OK
    assert "minilm-l6" in capsys.readouterr().out
    out = tmp_path / "tiny.onnx"
    assert nlpress("models", "get", "bert-tiny-random", "-o", out) == EXIT_OK
    assert load_model(out).graph.inputs[0].name == "input_ids"
    assert nlpress("models", "get", "nope", "-o", out) == EXIT_USAGE


STATIC = [
    "--shape",
    "input_ids=1x16",
    "--shape",
    "attention_mask=1x16",
    "--shape",
    "token_type_ids=1x16",
]


def test_compile_then_run_and_inspect_the_artifact(tiny_bert_path, tmp_path, capsys):
    artifact = tmp_path / "x86"
    assert nlpress("compile", "bert-tiny-random", "-t", "x86", "-o", artifact, *STATIC) == EXIT_OK
    built = capsys.readouterr()
    assert built.out.strip() == str(artifact)
    assert built.err.startswith("compiled bert-tiny-random for x86 (")
    assert "  checked    model.so against model.onnx" in built.err
    assert sorted(p.name for p in artifact.iterdir()) >= ["manifest.json", "model.onnx", "model.so"]

    assert (
        nlpress("run", artifact, "--text", "a sentence to embed", "--save", tmp_path / "out")
        == EXIT_OK
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("output last_hidden_state: mean-pooled over the attention mask")
    assert printed[1].startswith("text 1: float32[64] norm ")
    tvm_out = np.load(tmp_path / "out" / "last_hidden_state.npy")
    assert (
        nlpress(
            "run", "bert-tiny-random", "--text", "a sentence to embed", "--save", tmp_path / "ort"
        )
        == EXIT_OK
    )
    ort_out = np.load(tmp_path / "ort" / "last_hidden_state.npy")
    n = ort_out.shape[1]  # ORT pads to the text's length; the artifact to its static 16
    np.testing.assert_allclose(tvm_out[:, :n], ort_out, atol=1e-4)

    ids = tmp_path / "ids.npy"
    np.save(ids, np.ones((1, 16), np.int64))
    capsys.readouterr()
    feeds = [f"--input={name}={ids}" for name in ("input_ids", "attention_mask", "token_type_ids")]
    assert nlpress("run", artifact, *feeds) == EXIT_OK
    np.save(ids, np.ones((1, 15), np.int64))
    assert nlpress("run", artifact, *feeds) == EXIT_USAGE
    assert "input_ids" in capsys.readouterr().err

    assert nlpress("bench", artifact, "--vs-ort", "--runs", "3", "--json") == EXIT_OK
    timing = json.loads(capsys.readouterr().out)
    assert timing["nlpress_ms"] > 0 and timing["ort_ms"] > 0 and timing["worst"] < 1e-4
    assert nlpress("bench", tiny_bert_path) == EXIT_USAGE

    capsys.readouterr()
    assert nlpress("inspect", artifact, "--json") == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["manifest"]["source"]["zoo"] == "bert-tiny-random"
    assert summary["manifest"]["pipeline"].startswith("fold{shape=input_ids:1x16")
    assert nlpress("inspect", artifact) == EXIT_OK
    shown = capsys.readouterr().out
    assert shown.startswith("compiled bert-tiny-random for x86 (") and str(artifact) in shown
    for line in ("  pipeline   fold{shape=input_ids:1x16", "  size       weights ", "\nparameters"):
        assert line in shown


def test_compile_errors_name_what_is_valid(tmp_path, capsys):
    out = tmp_path / "out"
    assert nlpress("compile", "bert-tiny-random", "-t", "tpu", "-o", out) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "x86" in err and "arm" in err and "cuda" in err
    assert (
        nlpress("compile", "bert-tiny-random", "-t", "cuda", "--arch", "sm_1", "-o", out)
        == EXIT_USAGE
    )
    assert "sm_80" in capsys.readouterr().err
    assert (
        nlpress("compile", "bert-tiny-random", "-t", "x86", "--tune", "8", "-o", out) == EXIT_USAGE
    )
    assert "--tuning-records" in capsys.readouterr().err
    assert not out.exists()


def test_bench_runs_a_workload_of_sentences_through_both_runtimes(tiny_artifact, tmp_path, capsys):
    artifact = tiny_artifact
    workload = tmp_path / "sentences.txt"
    sentences = ["a short one", "a somewhat longer sentence than the first", "third", "four"]
    workload.write_text("\n".join(sentences) + "\n")
    args = ["bench", artifact, "--vs-ort", "--workload", workload, "--batch", "3", "--json"]
    assert nlpress(*args) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result["sentences"] == 4 and result["batches"] == 2  # batches of 3 and 1
    for runtime in ("nlpress", "ort"):
        figures = result[runtime]
        assert figures["sentences_per_s"] > 0
        assert figures["p50_ms"] <= figures["p90_ms"] <= figures["p99_ms"]
    assert min(result["least_cosine"].values()) > 0.9999  # fp32 artifact against ORT
    assert nlpress("bench", artifact, "--workload", workload) == EXIT_OK
    assert "sentences/s" in capsys.readouterr().out


def test_the_command_line_starts_without_pytorch():
    """PyTorch is imported only when distillation runs: it would double every command's start."""
    code = "import sys, nlpress.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_running_an_artifact_leaves_pytorch_out(tiny_artifact):
    """TVM would import PyTorch to exchange tensors with it; nlpress hands it numpy arrays only."""
    code = (
        "import sys, nlpress\n"
        f"nlpress.load({str(tiny_artifact)!r}).encode(['a sentence'])\n"
        "assert 'tvm' in sys.modules and 'torch' not in sys.modules, 'torch came with tvm'\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('torch'), 'distillation could not import it now'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_package_lists_its_public_names_only():
    import nlpress as package

    assert {"compile", "optimize", "load", "SessionOptions"} <= set(dir(package))
    assert not {"annotations", "importlib", "version", "PackageNotFoundError"} & set(dir(package))


def test_passes_prints_each_option_in_at_most_two_lines(capsys):
    assert nlpress("passes") == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    options = [i for i, line in enumerate(lines) if line.startswith("    ") and line[4] != " "]
    assert len(options) >= sum(len(cls.option_help()) for cls in PASSES.values())
    for start in options:
        wrapped = 1
        while start + wrapped < len(lines) and lines[start + wrapped].startswith(" " * 8):
            wrapped += 1
        assert wrapped <= 2, lines[start]
        assert all(len(line) <= 100 for line in lines[start : start + wrapped])
