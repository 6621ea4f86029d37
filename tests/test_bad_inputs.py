"""Bad input and faults, as a new user meets them: one line, the right exit code, nothing lost.

Every case is a command line, the exit code it must give, and a fragment of the one line it
must print on stderr. Each case also checks that stderr holds exactly that line (no traceback,
no "internal error"), that no file appeared or vanished anywhere under the case's folder (no
output and no staging left behind), and that every file the command line names kept its sha256.
Cases run in-process (fast); those that once crashed the process by a signal also run in a
subprocess below, where a signal would show.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import graphs
import numpy as np
import onnx
import pytest
from commands import nlpress
from onnx import TensorProto, helper

from nlpress.cli import EXIT_BUDGET, EXIT_FAILED, EXIT_USAGE
from nlpress.ir import file_sha256
from nlpress.models import zoo

VOCAB = 30522


@dataclass(frozen=True)
class Case:
    """A command line with {placeholders}, its exit code, and a fragment of its one line."""

    argv: str
    code: int
    fragment: str


OPT = "opt {tiny} -p fold -o {out}/o.onnx"
FEEDS3 = "--input input_ids={ids} --input attention_mask={ids} --input token_type_ids={zeros}"
LONG3 = "--input input_ids={ids513} --input attention_mask={ids513} --input token_type_ids={ids513}"

CASES: dict[str, Case] = {
    # --- model files ---------------------------------------------------------------------
    "missing-model": Case("opt {inputs}/nope.onnx -p fold -o {out}/o.onnx", 1, "no such file"),
    "garbage-model": Case("opt {garbage} -p fold -o {out}/o.onnx", 1, "not a readable ONNX"),
    "empty-model": Case("opt {empty} -p fold -o {out}/o.onnx", 1, "empty.onnx"),
    "truncated-model": Case("opt {truncated} -p fold -o {out}/o.onnx", 1, "truncated.onnx"),
    "opset-99": Case("opt {opset99} -p fold -o {out}/o.onnx", 1, "opset 99 is newer"),
    "missing-external-data": Case(
        "opt {external} -p fold -o {out}/o.onnx", 1, "cannot load its weights"
    ),
    "text-file-as-model": Case("opt {text} -p fold -o {out}/o.onnx", 1, "text.txt"),
    "unknown-zoo-name": Case("opt no-such-model -p fold -o {out}/o.onnx", 2, "no zoo model"),
    "diff-with-garbage": Case("diff {tiny} {garbage}", 1, "garbage.onnx"),
    "diff-with-a-folder": Case("diff {tiny} {art}", 1, "a folder, not an ONNX file"),
    "dump-ir-onto-a-file": Case(f"{OPT} --dump-ir {{text}}", 1, "--dump-ir"),
    "inspect-garbage": Case("inspect {garbage}", 1, "garbage.onnx"),
    "inspect-folder-without-manifest": Case("inspect {out}", 1, "no manifest.json"),
    "inspect-bad-manifest": Case("inspect {art_bad_manifest}", 1, "unreadable manifest"),
    # --- outputs that would overwrite an input, or cannot be written -----------------------
    "opt-onto-input": Case("opt {tiny} -p fold -o {tiny}", 2, "is the input"),
    "opt-onto-symlink-of-input": Case("opt {tiny} -p fold -o {tiny_link}", 2, "is the input"),
    "opt-onto-hard-link-of-input": Case("opt {tiny} -p fold -o {tiny_hard}", 2, "is the input"),
    "opt-from-symlink-onto-input": Case("opt {tiny_link} -p fold -o {tiny}", 2, "is the input"),
    "opt-onto-calibration-text": Case(
        "opt {tiny} -p fold --calibration-text {text} -o {text}", 2, "is the input"
    ),
    "opt-onto-zoo-cache": Case("opt bert-tiny-random -p fold -o {cache}", 2, "is the input"),
    "models-get-onto-zoo-cache": Case("models get bert-tiny-random -o {cache}", 2, "is the input"),
    "opt-unwritable-output": Case(OPT.replace("{out}/o.onnx", "/proc/o.onnx"), 1, "cannot write"),
    "opt-output-under-a-file": Case(
        OPT.replace("{out}/o.onnx", "{tiny}/o.onnx"), 1, "is not a folder"
    ),
    "opt-output-is-a-folder": Case(OPT.replace("{out}/o.onnx", "{inputs}"), 1, "is a folder"),
    "compile-into-folder-holding-input": Case(
        "compile {tiny} -t x86 -o {inputs}", 2, "holds the input"
    ),
    "compile-onto-input-file": Case("compile {tiny} -t x86 -o {tiny}", 2, "is the input"),
    "compile-onto-a-file": Case("compile {tiny} -t x86 -o {text}", 2, "not a folder"),
    "compile-into-non-artifact-folder": Case(
        "compile {tiny} -t x86 -o {notes}", 2, "not an nlpress artifact"
    ),
    "compile-unwritable-output": Case("compile {tiny} -t x86 -o /proc/nlpress", 1, "cannot write"),
    "compile-records-inside-output": Case(
        "compile {tiny} -t x86 --tune 2 --tuning-records {art}/rec -o {art}", 2, "holds the input"
    ),
    # --- pipelines and their options -------------------------------------------------------
    "unknown-pass": Case("opt {tiny} -p nosuchpass -o {out}/o.onnx", 2, "unknown pass"),
    "unknown-option": Case("opt {tiny} -p cleanup{{bogus=1}} -o {out}/o.onnx", 2, "bogus"),
    "option-given-twice": Case(
        "opt {tiny} -p 'cleanup{{remove-unused-inputs=false remove-unused-inputs=true}}' "
        "-o {out}/o.onnx",
        2,
        "given twice",
    ),
    "option-without-value": Case("opt {tiny} -p cleanup{{x}} -o {out}/o.onnx", 2, "needs a value"),
    "bad-option-value": Case(
        "opt {tiny} -p 'cleanup{{remove-unused-inputs=maybe}}' -o {out}/o.onnx", 2, "true or false"
    ),
    "budget-out-of-range": Case(
        "opt {tiny} -p 'quantize-insert{{budget-cosine=2}}' -o {out}/o.onnx", 2, "budget-cosine"
    ),
    "unbalanced-brace": Case("opt {tiny} -p 'fold{{' -o {out}/o.onnx", 2, "unbalanced"),
    "empty-pipeline": Case("opt {tiny} -p '' -o {out}/o.onnx", 2, "opt needs"),
    "empty-step": Case("opt {tiny} -p fold,,cleanup -o {out}/o.onnx", 2, "empty step"),
    "no-pipeline": Case("opt {tiny} -o {out}/o.onnx", 2, "-p PIPELINE"),
    "unknown-command": Case("frobnicate", 2, "invalid choice"),
    "unknown-flag": Case("opt {tiny} -p fold -o {out}/o.onnx --frob", 2, "--frob"),
    # --- shapes ----------------------------------------------------------------------------
    "shape-malformed": Case(f"{OPT} --shape input_ids", 2, "expected NAME=DIMS"),
    "shape-bad-dims": Case(f"{OPT} --shape input_ids=1x-3", 2, "expected sizes"),
    "shape-unknown-input": Case(f"{OPT} --shape foo=1x2", 2, "--shape foo: no such input"),
    "shape-wrong-rank": Case(f"{OPT} --shape input_ids=1x2x3", 2, "3 dims, but the input has 2"),
    "shape-twice": Case(f"{OPT} --shape input_ids=1x8 --shape input_ids=1x9", 2, "given twice"),
    "shape-twice-in-a-pipeline": Case(
        "opt {tiny} -p fold{{shape=input_ids:1x8,input_ids:1x9}} -o {out}/o.onnx",
        2,
        "shape input_ids is given twice",
    ),
    "shape-past-position-table": Case(
        f"{OPT} --shape input_ids=1x600", 2, "at most sequence = 512"
    ),
    "shape-without-fold": Case(
        "opt {tiny} -p cleanup --shape input_ids=1x8 -o {out}/o.onnx", 2, "fixes shapes"
    ),
    # --- build files -----------------------------------------------------------------------
    "config-missing": Case(f"{OPT} --config {{inputs}}/nope.toml", 2, "cannot read build file"),
    "config-not-toml": Case(f"{OPT} --config {{text}}", 2, "cannot read build file"),
    "config-unknown-key": Case(f"{OPT} --config {{config_unknown}}", 2, "unknown key 'modle'"),
    "config-wrong-type": Case(f"{OPT} --config {{config_type}}", 2, "must be a string"),
    # --- calibration -----------------------------------------------------------------------
    "no-calibration-data": Case(
        "opt {matmul} -p prune-sparsify -o {out}/o.onnx", 1, "needs calibration data"
    ),
    "calibration-text-without-tokenizer": Case(
        "opt {tiny} -p prune-sparsify --calibration-text {text} -o {out}/o.onnx",
        2,
        "needs --tokenizer",
    ),
    "calibration-text-missing": Case(
        "opt bert-tiny-random -p prune-sparsify --calibration-text {inputs}/nope.txt "
        "-o {out}/o.onnx",
        1,
        "cannot read sentences",
    ),
    "calibration-text-empty": Case(
        "opt bert-tiny-random -p prune-sparsify --calibration-text {blank} -o {out}/o.onnx",
        1,
        "holds no sentences",
    ),
    "calibration-text-binary": Case(
        "opt bert-tiny-random -p prune-sparsify --calibration-text {garbage} -o {out}/o.onnx",
        1,
        "cannot read sentences",
    ),
    "tokenizer-not-json": Case(
        "opt {tiny} -p prune-sparsify --calibration-text {text} --tokenizer {text} -o {out}/o.onnx",
        2,
        "not a tokenizer.json",
    ),
    "npz-wrong-keys": Case(
        "opt {tiny} -p prune-sparsify --calibration {npz_keys} -o {out}/o.onnx",
        2,
        "holds a, b (missing input_ids, attention_mask, token_type_ids; not inputs: a, b); "
        "the model's inputs are input_ids, attention_mask, token_type_ids",
    ),
    "npz-missing-one-key": Case(
        "opt {tiny} -p prune-sparsify --calibration {npz_two} -o {out}/o.onnx",
        2,
        "missing token_type_ids",
    ),
    "npz-wrong-dtype": Case(
        "opt {tiny} -p prune-sparsify --calibration {npz_float} -o {out}/o.onnx",
        2,
        "input_ids: dtype float32, expected int64",
    ),
    "npz-ids-outside-vocabulary": Case(
        "opt {tiny} -p prune-sparsify --calibration {npz_vocab} -o {out}/o.onnx",
        2,
        "out of range",
    ),
    "npz-not-an-archive": Case(
        "opt {tiny} -p prune-sparsify --calibration {text} -o {out}/o.onnx",
        1,
        "not an .npz archive",
    ),
    "npz-ragged-batch": Case(
        "opt {tiny} -p prune-sparsify --calibration {npz_ragged} -o {out}/o.onnx",
        1,
        "sharing their first (batch) axis",
    ),
    "budget-not-met-opt": Case(
        "opt {tiny} -p 'fold,quantize-insert{{budget-cosine=0.99999999}}' "
        "--calibration {npz_good} -o {out}/o.onnx",
        EXIT_BUDGET,
        "quantize-insert: budget-cosine=0.99999999 asked, 0.99",
    ),
    # --- compile ---------------------------------------------------------------------------
    "unknown-target": Case("compile {tiny} -t tpu -o {out}/a", 2, "x86, arm, cuda"),
    "unknown-cuda-arch": Case("compile {tiny} -t cuda --arch sm_1 -o {out}/a", 2, "sm_80"),
    "tune-without-records": Case(
        "compile {tiny} -t x86 --tune 8 -o {out}/a", 2, "--tuning-records"
    ),
    "tune-negative": Case("compile {tiny} -t x86 --tune -5 -o {out}/a", 2, "positive whole"),
    "tune-zero": Case("compile {tiny} -t x86 --tune 0 -o {out}/a", 2, "positive whole"),
    "tune-not-a-number": Case("compile {tiny} -t x86 --tune many -o {out}/a", 2, "positive whole"),
    "tune-symbolic": Case(
        "compile {tiny} -t x86 --tune 2 --tuning-records {out}/rec -o {out}/a",
        2,
        "--tune measures kernels at fixed sizes",
    ),
    "unsupported-op": Case("compile {celu} -t x86 -o {out}/a", 1, "does not support: Celu"),
    "compile-opset-99": Case("compile {opset99} -t x86 -o {out}/a", 1, "opset 99"),
    "compile-needs-target": Case("compile {tiny} -o {out}/a", 2, "-t TARGET"),
    "budget-not-met-compile": Case(
        "compile {tiny} -t x86 -p 'fold,quantize-insert{{budget-cosine=0.99999999}}' "
        "--calibration {npz_good} -o {out}/a",
        EXIT_BUDGET,
        "budget-cosine=0.99999999 asked",
    ),
    # --- run: feeds ------------------------------------------------------------------------
    "run-sequence-513": Case(f"run {{art}} {LONG3}", 2, "is 513; the model computes at most"),
    "run-sequence-1000": Case(
        "run {art} --input input_ids={ids1000} --input attention_mask={ids1000} "
        "--input token_type_ids={ids1000}",
        2,
        "is 1000",
    ),
    "run-onnx-sequence-513": Case(f"run {{tiny}} {LONG3}", 2, "sequence = 512"),
    "run-token-id-outside-vocabulary": Case(
        "run {art} --input input_ids={ids_vocab} --input attention_mask={ids} "
        "--input token_type_ids={zeros}",
        2,
        f"value {VOCAB} is out of range",
    ),
    "run-token-type-outside-table": Case(
        "run {art} --input input_ids={ids} --input attention_mask={ids} "
        "--input token_type_ids={ids3}",
        2,
        "token_type_ids: value 3 is out of range [-2, 1]",
    ),
    "run-wrong-dtype": Case(
        "run {art} --input input_ids={floats} --input attention_mask={ids} "
        "--input token_type_ids={zeros}",
        2,
        "dtype float32, expected int64",
    ),
    "run-wrong-rank": Case(
        "run {art} --input input_ids={rank3} --input attention_mask={ids} "
        "--input token_type_ids={zeros}",
        2,
        "rank 3",
    ),
    "run-mismatched-dims": Case(
        "run {art} --input input_ids={ids} --input attention_mask={ids513} "
        "--input token_type_ids={zeros}",
        2,
        "but input_ids gave sequence = 8",
    ),
    "run-missing-input": Case(
        "run {art} --input input_ids={ids} --input attention_mask={ids}",
        2,
        "missing token_type_ids",
    ),
    "run-unknown-input": Case(f"run {{art}} {FEEDS3} --input bogus={{ids}}", 2, "unknown bogus"),
    "run-input-twice": Case(f"run {{art}} {FEEDS3} --input input_ids={{ids}}", 2, "given twice"),
    "run-input-malformed": Case("run {art} --input input_ids", 2, "expected NAME=FILE.npy"),
    "run-no-feeds": Case("run {art}", 2, "run needs --input"),
    "run-text-file-as-npy": Case(
        "run {art} --input input_ids={text_npy} --input attention_mask={ids} "
        "--input token_type_ids={zeros}",
        1,
        "not a .npy file",
    ),
    "run-npz-as-npy": Case(
        "run {art} --input input_ids={npz_keys} --input attention_mask={ids} "
        "--input token_type_ids={zeros}",
        1,
        "an .npz archive",
    ),
    "run-truncated-npy": Case(
        "run {art} --input input_ids={npy_cut} --input attention_mask={ids} "
        "--input token_type_ids={zeros}",
        1,
        "not a readable .npy array",
    ),
    "run-missing-npy": Case(
        "run {art} --input input_ids={inputs}/nope.npy --input attention_mask={ids} "
        "--input token_type_ids={zeros}",
        1,
        "cannot read",
    ),
    "run-object-npy": Case(
        "run {art} --input input_ids={npy_object} --input attention_mask={ids} "
        "--input token_type_ids={zeros}",
        1,
        "not a readable .npy array",
    ),
    "run-save-onto-input": Case(
        "run {art} --input input_ids={ids} --input attention_mask={ids} "
        "--input token_type_ids={saved_as_output} --save {inputs}",
        2,
        "--save",
    ),
    "run-text-without-tokenizer": Case("run {matmul} --text hello", 2, "needs --tokenizer"),
    "run-bad-tokenizer": Case("run {art} --text hello --tokenizer {text}", 2, "tokenizer.json"),
    # --- run: artifacts --------------------------------------------------------------------
    "run-not-an-artifact": Case(f"run {{out}} {FEEDS3}", 2, "not an nlpress artifact"),
    "run-truncated-library": Case(f"run {{art_cut}} {FEEDS3}", 1, "the library is damaged"),
    "run-library-cut-in-header": Case(f"run {{art_stub}} {FEEDS3}", 1, "cut inside its ELF"),
    "run-overwritten-library": Case(f"run {{art_flipped}} {FEEDS3}", 1, "sha256 differs"),
    "run-truncated-library-old-manifest": Case(
        f"run {{art_cut_old}} {FEEDS3}", 1, "its ELF headers reach byte"
    ),
    "run-text-as-library": Case(f"run {{art_text_so}} {FEEDS3}", 1, "no ELF header"),
    "run-bad-manifest": Case(f"run {{art_bad_manifest}} {FEEDS3}", 2, "unreadable manifest"),
    "run-future-format": Case(f"run {{art_future}} {FEEDS3}", 2, "artifact format 99"),
    "run-for-another-cpu": Case(f"run {{art_other_cpu}} {FEEDS3}", 2, "which this CPU"),
    # --- bench -----------------------------------------------------------------------------
    "bench-runs-zero": Case("bench {art} --runs 0", 2, "positive whole"),
    "bench-runs-negative": Case("bench {art} --runs -3", 2, "positive whole"),
    "bench-threads-negative": Case("bench {art} --threads -1", 2, "expected a thread count"),
    "run-threads-word": Case("run {art} --threads many --text hi", 2, "expected a thread count"),
    "bench-a-model-file": Case("bench {tiny}", 2, "bench takes an artifact folder"),
    "bench-shape-unknown-input": Case("bench {art} --shape foo=1x8", 2, "--shape foo: no such"),
    "bench-shape-wrong-rank": Case("bench {art} --shape input_ids=8", 2, "1 dims, but the input"),
    "bench-shape-past-limit": Case("bench {art} --shape input_ids=1x513", 2, "at most"),
    "bench-truncated-library": Case("bench {art_cut}", 1, "the library is damaged"),
    # --- eval and the zoo ------------------------------------------------------------------
    "eval-without-tokenizer": Case("eval {tiny} --reference {matmul}", 2, "--tokenizer"),
    "models-get-unknown": Case("models get nope -o {out}/x.onnx", 2, "unknown zoo model"),
}


def _tree(root: Path) -> set[str]:
    return {os.path.relpath(p, root) for p in root.rglob("*")}


def _named_files(argv: list[str], root: Path) -> dict[str, str]:
    """The sha256 of every file the command line names (whole folders for folders)."""
    digests: dict[str, str] = {}
    for arg in argv:
        path = Path(arg.partition("=")[2] or arg)
        if not path.exists():
            continue
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        digests.update({os.fspath(f): file_sha256(f) for f in files})
    return digests


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, bad: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    argv = shlex.split(case.argv.format(**bad))
    root = Path(bad["root"])
    tree, digests = _tree(root), _named_files(argv, root)
    capsys.readouterr()
    code = nlpress(*argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == case.code, err
    assert len(lines) == 1, err
    assert case.fragment in lines[0], err
    assert "internal error" not in err and "Traceback" not in err
    assert _tree(root) == tree, "files appeared or vanished"
    assert _named_files(argv, root) == digests, "an input changed"


def test_the_suite_is_large() -> None:
    assert len(CASES) >= 60
    assert {c.code for c in CASES.values()} == {EXIT_FAILED, EXIT_USAGE, EXIT_BUDGET}


# --- the same cases where a crash would be a signal: in a subprocess ------------------------

SIGNAL_PRONE = [
    "run-sequence-513",
    "run-sequence-1000",
    "run-onnx-sequence-513",
    "run-truncated-library",
    "run-truncated-library-old-manifest",
    "run-overwritten-library",
    "bench-shape-past-limit",
]


# Runs each case's command line in one fresh process, one JSON line per case on stdout.
DRIVER = """
import contextlib, io, json, sys
from nlpress.cli import main
for name, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    print(json.dumps({"name": name, "code": code, "stderr": err.getvalue()}), flush=True)
"""


def test_no_signal_in_a_fresh_process(bad: dict[str, str]) -> None:
    """The cases that once died by SIGSEGV or SIGBUS, where a signal would end the process."""
    cases = [(name, shlex.split(CASES[name].argv.format(**bad))) for name in SIGNAL_PRONE]
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    ran = [r["name"] for r in results]
    assert done.returncode == 0, f"died after {ran} with {done.returncode}: {done.stderr[-2000:]}"
    assert ran == SIGNAL_PRONE
    for result in results:
        case = CASES[result["name"]]
        assert result["code"] == case.code, result
        assert _one_line(result["stderr"]) and case.fragment in result["stderr"], result


def test_a_long_text_is_cut_and_said_so(bad: dict[str, str]) -> None:
    text = " ".join(["word"] * 3000)
    done = _subprocess(["run", bad["art"], "--text", text])
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == (
        "nlpress: --text: text 1 of up to 3002 tokens cut to 512, the longest the model takes"
    )
    assert done.stdout.splitlines()[1].startswith("text 1: float32[64] norm ")


def test_bench_vs_ort_picks_a_shape_for_a_symbolic_artifact(
    bad: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert nlpress("bench", bad["art"], "--vs-ort", "--runs", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("feeds      input_ids 1x128, attention_mask 1x128")
    assert [line.split()[0] for line in lines] == [
        "feeds", "nlpress", "ORT", "ratio", "vs", "vs", "vs"
    ]  # fmt: skip
    assert "last_hidden_state pooled cosine 1.0" in lines[4]
    assert "against model.onnx run as written" in lines[5]
    assert "float source bert-tiny-random" in lines[6]


def _subprocess(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nlpress.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _one_line(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return len(lines) == 1 and "Traceback" not in stderr and "internal error" not in stderr


# --- the inputs the cases name ----------------------------------------------------------


@pytest.fixture(scope="module")
def bad(
    tiny_bert_path: Path, tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """A folder of good and bad inputs, a symbolic bert-tiny-random artifact, damaged copies."""
    root = tmp_path_factory.mktemp("bad")
    inputs, out = root / "inputs", root / "out"
    inputs.mkdir()
    out.mkdir()
    places = {"root": root, "inputs": inputs, "out": out, "cache": tiny_bert_path}
    places.update(_model_files(inputs, tiny_bert_path))
    places.update(_arrays(inputs))
    places.update(_texts(inputs))
    places.update(_artifacts(inputs, tiny_artifact))
    return {k: os.fspath(v) for k, v in places.items()}


def _model_files(inputs: Path, tiny_bert: Path) -> dict[str, Path]:
    data = tiny_bert.read_bytes()
    tiny = inputs / "tiny.onnx"
    tiny.write_bytes(data)  # byte-identical to the zoo's export
    (inputs / "tiny-link.onnx").symlink_to(tiny)
    os.link(tiny, inputs / "tiny-hard.onnx")
    (inputs / "garbage.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (inputs / "empty.onnx").write_bytes(b"")
    (inputs / "truncated.onnx").write_bytes(data[: len(data) // 3])
    proto = onnx.load(os.fspath(tiny))
    for entry in proto.opset_import:
        entry.version = 99 if entry.domain in ("", "ai.onnx") else entry.version
    onnx.save(proto, os.fspath(inputs / "opset99.onnx"))
    proto = onnx.load(os.fspath(tiny))
    onnx.save(
        proto,
        os.fspath(inputs / "external.onnx"),
        save_as_external_data=True,
        location="external.data",
        size_threshold=0,
    )
    (inputs / "external.data").unlink()
    celu = graphs.build(
        [helper.make_node("Celu", ["x"], ["y"], name="act")],
        [graphs.tensor("x", [2, 3])],
        [graphs.tensor("y", [2, 3])],
    )
    onnx.save(celu, os.fspath(inputs / "celu.onnx"))
    matmul = graphs.dense(["batch", 8], graphs.weights([8, 4]), activation=None).to_onnx()
    onnx.save(matmul, os.fspath(inputs / "matmul.onnx"))
    names = ["tiny", "garbage", "empty", "truncated", "opset99", "external", "celu", "matmul"]
    found = {name: inputs / f"{name}.onnx" for name in names}
    found["tiny_link"] = inputs / "tiny-link.onnx"
    found["tiny_hard"] = inputs / "tiny-hard.onnx"
    return found


def _arrays(inputs: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    arrays = {
        "ids": np.ones((1, 8), np.int64),
        "zeros": np.zeros((1, 8), np.int64),
        "ids3": np.full((1, 8), 3, np.int64),
        "ids513": np.ones((1, 513), np.int64),
        "ids1000": np.ones((1, 1000), np.int64),
        "ids_vocab": np.full((1, 8), VOCAB, np.int64),
        "floats": np.ones((1, 8), np.float32),
        "rank3": np.ones((1, 8, 1), np.int64),
    }
    found = {}
    for name, array in arrays.items():
        np.save(inputs / f"{name}.npy", array)
        found[name] = inputs / f"{name}.npy"
    np.save(inputs / "last_hidden_state.npy", np.zeros((1, 8), np.int64))
    found["saved_as_output"] = inputs / "last_hidden_state.npy"
    np.save(inputs / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    found["npy_object"] = inputs / "object.npy"
    (inputs / "cut.npy").write_bytes((inputs / "ids513.npy").read_bytes()[:300])
    found["npy_cut"] = inputs / "cut.npy"
    ids = rng.integers(0, VOCAB, (16, 12))
    good = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids}
    npz = {
        "npz_good": good,
        "npz_keys": {"a": ids, "b": ids},
        "npz_two": {k: v for k, v in good.items() if k != "token_type_ids"},
        "npz_float": {**good, "input_ids": ids.astype(np.float32)},
        "npz_vocab": {**good, "input_ids": ids + VOCAB},
        "npz_ragged": {**good, "attention_mask": np.ones((15, 12), np.int64)},
    }
    for name, content in npz.items():
        np.savez(inputs / f"{name}.npz", **content)
        found[name] = inputs / f"{name}.npz"
    return found


def _texts(inputs: Path) -> dict[str, Path]:
    (inputs / "text.txt").write_text("a sentence to calibrate on\nanother one\n")
    (inputs / "text-as.npy").write_text("this is text, not an array\n")
    (inputs / "blank.txt").write_text("\n  \n")
    (inputs / "unknown.toml").write_text('[build]\nmodle = "x"\n')
    (inputs / "type.toml").write_text("[build]\npipeline = 3\n")
    notes = inputs / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("mine")
    return {
        "text": inputs / "text.txt",
        "text_npy": inputs / "text-as.npy",
        "blank": inputs / "blank.txt",
        "config_unknown": inputs / "unknown.toml",
        "config_type": inputs / "type.toml",
        "notes": notes,
    }


def _artifacts(inputs: Path, compiled: Path) -> dict[str, Path]:
    art = inputs / "art"
    shutil.copytree(compiled, art)  # the shared compile of the zoo model tiny.onnx copies
    library = (art / "model.so").read_bytes()

    def copy(name: str, so: bytes | None = None, manifest: dict | None = None) -> Path:
        target = inputs / name
        shutil.copytree(art, target)
        if so is not None:
            (target / "model.so").write_bytes(so)
        if manifest is not None:
            (target / "manifest.json").write_text(json.dumps(manifest))
        return target

    recorded = json.loads((art / "manifest.json").read_text())
    old = {k: v for k, v in recorded.items() if k != "library"}
    code = recorded.get("code") or {"arch": "x86", "features": []}
    other_cpu = {**code, "features": [*code.get("features", []), "a_feature_no_cpu_has"]}
    flipped = bytearray(library)
    flipped[len(flipped) // 2] ^= 0xFF
    found = {
        "art": art,
        "art_cut": copy("art-cut", library[: len(library) // 2]),
        "art_stub": copy("art-stub", library[:10], old),
        "art_flipped": copy("art-flipped", bytes(flipped)),
        "art_cut_old": copy("art-cut-old", library[: len(library) - 4096], old),
        "art_text_so": copy("art-text-so", b"not a library\n" * 100, old),
        "art_future": copy("art-future", None, {**recorded, "format_version": 99}),
        "art_other_cpu": copy("art-other-cpu", None, {**recorded, "code": other_cpu}),
    }
    found["art_bad_manifest"] = copy("art-bad-manifest")
    (found["art_bad_manifest"] / "manifest.json").write_text("{ not json")
    return found


def test_the_zoo_cache_is_untouched(bad: dict[str, str]) -> None:
    assert (
        file_sha256(bad["cache"])
        == json.loads((zoo.cache_dir() / "bert-tiny-random.json").read_text())["sha256"]
    )


def test_onnx_model_with_a_sequence_type_input_is_one_line(tmp_path: Path, capsys) -> None:
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    proto = helper.make_model(
        helper.make_graph(
            [helper.make_node("SequenceLength", ["s"], ["n"])],
            "g",
            [seq],
            [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    path = tmp_path / "seq.onnx"
    onnx.save(proto, os.fspath(path))
    np.save(tmp_path / "x.npy", np.ones(3, np.float32))
    code = nlpress("run", os.fspath(path), "--input", f"s={tmp_path / 'x.npy'}")
    err = capsys.readouterr().err
    assert code in (EXIT_FAILED, EXIT_USAGE) and _one_line(err), err
