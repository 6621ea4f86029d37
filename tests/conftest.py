"""Shared fixtures: the zoo models (exported once per cache), the graph builder, golden dumps."""

from __future__ import annotations

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
