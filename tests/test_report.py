"""report.html and the readable manifest, on bert-tiny-random: compile -p int8 and opt --report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from commands import nlpress

from nlpress.cli import EXIT_OK, EXIT_USAGE
from nlpress.targets.report_html import render

ARTIFACT_SECTIONS = ("summary", "pipeline", "sizes", "decisions", "fidelity", "kernels", "artifact")


@pytest.fixture(scope="module")
def artifact(int8_on_a_terminal: tuple[Path, str]) -> Path:
    """The bert-tiny-random int8 artifact, as compiled on a terminal."""
    return int8_on_a_terminal[0]


def sections(page: str) -> list[str]:
    return re.findall(r'<section id="([a-z]+)">', page)


def assert_self_contained(page: str) -> None:
    """No URL of any kind, nothing loaded: plots are inline <svg> elements.

    The only references are the SVGs' own, to their parts on the page (`href="#id"`).
    """
    assert not re.search(r"https?:|//[a-z]", page, re.I)
    assert not re.search(r"<(img|script|link|iframe|object)\b", page, re.I)
    assert not re.search(r"\b(src|href)=\"(?!#)", page, re.I)


def test_the_artifact_holds_a_self_contained_report(artifact: Path) -> None:
    page = (artifact / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert sections(page) == list(ARTIFACT_SECTIONS)
    assert len(re.findall(r'<figure class="plot"><figcaption>[^<]+</figcaption><svg\b', page)) >= 4
    assert page.count("<svg") == page.count("</svg>")
    assert_self_contained(page)
    for words in ("Time per pass", "Stored bytes by dtype", "Stored bytes by layer",
                  "quantize-insert: range per activation", "Slowest"):  # fmt: skip
        assert words in page
    assert "Per-sentence cosine to the source model (" in page  # the held-out histogram


def test_the_manifest_writes_counts_as_ints_and_nests_per_layer_stats(artifact: Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    fold, quantize, _ = manifest["passes"]
    assert type(fold["stats"]["nodes_before"]) is int
    assert fold["stats"]["ops"]["after"]["MatMul"] >= 12
    stats = quantize["stats"]
    assert type(stats["layers_quantized"]) is int and stats["layers_quantized"] == 13
    assert type(stats["budget_cosine"]) is float
    assert not any("." in key for key in stats)  # no flat per-layer keys are left
    layers = stats["layers"]
    assert len(layers) == 13 and all(v == {"quantized": 1} for v in layers.values())
    assert "/inner/encoder/layer.0/attention/self/query/MatMul" in layers  # dotted names whole
    assert all(set(v) == {"range"} for v in stats["activations"].values())
    assert len(stats["tables"]) == 3

    sizes = manifest["sizes"]
    assert sizes["library_bytes"] == (artifact / "model.so").stat().st_size
    before, after = sizes["before"], sizes["after"]
    assert after["bytes"] < before["bytes"] / 3
    assert set(after["bytes_by_dtype"]) >= {"int8", "float32"}
    query = "/inner/encoder/layer.0/attention/self/query/MatMul"
    assert before["layers"][query]["dtype"] == "float32"
    assert after["layers"][query]["dtype"] == "int8"
    assert after["layers"][query]["bytes"] < before["layers"][query]["bytes"]


def test_the_report_measures_latency_by_kernel(artifact: Path) -> None:
    kernels = json.loads((artifact / "report.json").read_text())["kernels"]
    assert kernels["measured"] and kernels["dims"] == {"batch": 2, "sequence": 8}
    names = [k["name"] for k in kernels["kernels"]]
    assert any("qmatmul" in name for name in names)  # the int8 kernels ran
    assert not any(name.startswith("vm.builtin.") for name in names)
    seconds = [k["seconds"] for k in kernels["kernels"]]
    assert seconds == sorted(seconds, reverse=True) and min(seconds) > 0


def test_opt_report_has_the_pipeline_sections_and_no_artifact_ones(
    opt_int8_report: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    folder, done = opt_int8_report  # opt -p int8 -o o.onnx --report o.html
    assert f"report     {folder / 'o.html'}" in done.stderr
    page = (folder / "o.html").read_text()
    assert sections(page) == ["summary", "pipeline", "sizes", "decisions", "fidelity"]
    assert "nlpress optimization report" in page and page.count("<svg") >= 4
    assert_self_contained(page)
    assert [p.name for p in sorted(folder.iterdir())] == ["o.html", "o.onnx"]


def test_opt_report_may_not_replace_the_output_or_an_input(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o.onnx"
    assert nlpress("opt", "bert-tiny-random", "-p", "O1", "-o", out, "--report", out) == EXIT_USAGE
    assert "--report" in capsys.readouterr().err and not out.exists()
    assert nlpress("opt", "bert-tiny-random", "-p", "O1", "-o", out) == EXIT_OK
    before = out.read_bytes()
    args = ["opt", out, "-p", "O1", "-o", tmp_path / "p.onnx", "--report", out]
    assert nlpress(*args) == EXIT_USAGE
    assert out.read_bytes() == before and not (tmp_path / "p.onnx").exists()


def test_strings_from_the_model_are_escaped() -> None:
    evil = "<script>alert(1)</script>"
    record = {
        "pipeline": f"fold,{evil}",
        "source": {"zoo": evil, "sha256": None},
        "passes": [
            {
                "text": evil,
                "changed": True,
                "seconds": 0.5,
                "stats": {"layers": {evil: {"sparsity": 0.5}}, evil: 1},
            }
        ],
        "sizes": {},
        "fidelity": {
            "heldout": {
                "text": evil,
                "sentences": 3,
                "mean_cosine": 0.99,
                "min_cosine": 0.98,
                "per_sentence": [0.98, 0.99, 1.0],
            }
        },
    }
    page = render(record)
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "Per-sentence cosine to the source model (3 sentences)" in page
    assert "no held-out" not in page


def test_the_command_line_and_load_do_not_import_matplotlib() -> None:
    code = (
        "import sys, nlpress, nlpress.cli\n"
        "try:\n    nlpress.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "nlpress.load\n"
        "sys.exit('matplotlib' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert done.returncode == 0


def test_what_was_not_measured_is_said_not_left_out() -> None:
    reason = "the cuda library does not run on this host"
    manifest = {"target": {"name": "cuda"}, "pipeline": "fold", "fidelity": {
        "tvm_vs_onnxruntime": {"checked": False, "reason": reason}}}  # fmt: skip
    page = render(manifest, {"kernels": {"measured": False, "reason": reason}})
    assert sections(page) == list(ARTIFACT_SECTIONS)
    assert f"not measured: {reason}" in page and f"not checked: {reason}" in page
    assert "no passes recorded" in page and "no sizes recorded" in page
    assert "<svg" not in page
