"""Shared fixtures: the zoo models (exported once per cache), the graph builder, golden dumps."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

Golden = Callable[[str, str], None]


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--update-golden` rewrites the expected dumps instead of comparing with them.

    Golden files are the text dumps stored beside the tests that read them, in `golden/NAME.txt`.
    After a deliberate change to a rewrite, regenerate them with
    `python -m pytest tests/passes --update-golden`, then read the diff (`git diff tests/`)
    before committing it: the diff is the review of the change. A missing file is an error
    without the option.
    """
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="write the golden dumps (tests/**/golden/*.txt) from the current output",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    """A check `golden(name, text)`: `text` equals the stored `golden/NAME.txt` beside the test."""
    folder = Path(request.path).parent / "golden"
    update = bool(request.config.getoption("--update-golden"))

    def check(name: str, text: str) -> None:
        path = folder / f"{name}.txt"
        if update:
            folder.mkdir(exist_ok=True)
            path.write_text(text)
            return
        assert path.is_file(), f"no golden dump {path.name}: write it with --update-golden"
        assert text == path.read_text(), f"{path.name} differs (regenerate with --update-golden)"

    return check


@pytest.fixture(scope="session")
def tiny_bert_path() -> Path:
    """The bert-tiny-random zoo model (2 layers, hidden 64), exported by torch.onnx."""
    from nlpress.models import zoo

    return zoo.model_path("bert-tiny-random")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 zoo model."""
    from nlpress.models import zoo

    return zoo.model_path("minilm-l6")


# Artifacts several modules read: each is built once per run. They are shared, so a test that
# changes one (or writes into its folder) copies it to its own tmp_path first.

STATIC_1X16 = {name: (1, 16) for name in ("input_ids", "attention_mask", "token_type_ids")}
CALIBRATION_SENTENCES = 64  # 52 calibrate (4 batches), every fifth (12) is held out


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bert-tiny-random compiled for x86 as the README's main job compiles minilm-l6: the
    default pipeline, mean pooling and L2 normalization in the graph, its dims symbolic."""
    import nlpress

    out = tmp_path_factory.mktemp("tiny") / "x86"
    return nlpress.compile("bert-tiny-random", "x86", out, pooling="mean", normalize=True)


@pytest.fixture(scope="session")
def pruned_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bert-tiny-random with half its weights pruned, static at 1x16: outputs differ from ORT's."""
    import nlpress

    out = tmp_path_factory.mktemp("pruned") / "x86"
    pipeline = "prune-sparsify{sparsity=0.5}"
    return nlpress.compile("bert-tiny-random", "x86", out, pipeline, shapes=STATIC_1X16)


@pytest.fixture(scope="session")
def calibration_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo's first CALIBRATION_SENTENCES calibration sentences, one a line: an int8 build
    calibrates on a few batches and holds some out, as on the whole text, in less time."""
    from nlpress.models.text import calibration_sentences

    text = tmp_path_factory.mktemp("calibration") / "calibration.txt"
    text.write_text("".join(f"{s}\n" for s in calibration_sentences()[:CALIBRATION_SENTENCES]))
    return text


@pytest.fixture(scope="session")
def int8_on_a_terminal(
    tmp_path_factory: pytest.TempPathFactory, calibration_text: Path
) -> tuple[Path, str]:
    """`nlpress compile bert-tiny-random -t x86 -p int8` (on the short calibration text) run on
    a pseudo-terminal, in a fresh process: the artifact, and all the terminal showed."""
    from commands import nlpress_argv, on_a_terminal

    out = tmp_path_factory.mktemp("int8") / "int8"
    argv = nlpress_argv(
        "compile", "bert-tiny-random", "-t", "x86", "-p", "int8", "-o", out,
        "--calibration-text", calibration_text,
    )  # fmt: skip
    return out, "".join(text for _, text in on_a_terminal(argv))


@pytest.fixture(scope="session")
def opt_int8_report(
    tmp_path_factory: pytest.TempPathFactory, calibration_text: Path
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`nlpress opt bert-tiny-random -p int8 -o o.onnx --report o.html` (on the short
    calibration text) in a fresh process with no terminal: the folder that held nothing else,
    and the finished process."""
    from commands import nlpress_argv

    folder = tmp_path_factory.mktemp("opt-report")
    argv = nlpress_argv(
        "opt", "bert-tiny-random", "-p", "int8", "-o", folder / "o.onnx",
        "--report", folder / "o.html", "--calibration-text", calibration_text,
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return folder, done
