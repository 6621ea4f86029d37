"""The README's two set-up commands are the ones that work."""

import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]


def _shell_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.*?)```", readme, flags=re.DOTALL)


def test_readme_test_command_is_what_ci_runs():
    test_command = _shell_blocks()[1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_main_job_runs(tmp_path):
    """Compiles the real minilm-l6, as the README's main job does."""
    install_and_run = _shell_blocks()[0].strip()
    steps = [step.strip() for step in install_and_run.split("&&")]
    assert steps[0].startswith("pip install -e")
    for step in steps[1:]:
        done = subprocess.run(shlex.split(step), cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, f"{step}: {done.stderr}"
    lines = done.stdout.splitlines()
    assert (
        lines[0] == "output sentence_embedding: mean-pooled, L2-normalized, in the artifact's graph"
    )
    assert lines[1].startswith("text 1: float32[384] norm 1.00000")


def _python_block() -> str:
    readme = (ROOT / "README.md").read_text()
    [block] = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    return block


@pytest.mark.parametrize(
    ("model", "hidden"),
    [("bert-tiny-random", 64), pytest.param("minilm-l6", 384, marks=pytest.mark.slow)],
)
def test_readme_python_example_runs(model, hidden, tmp_path, monkeypatch):
    """The example as written (its model swapped for the fast one), in a fresh folder."""
    code = _python_block()
    assert code.count('"minilm-l6"') == 2
    code = code.replace('"minilm-l6"', f'"{model}"')
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    embeddings = namespace["embeddings"]
    assert embeddings.shape == (2, hidden) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(namespace["sentence_embedding"], embeddings, atol=1e-5)
    assert (tmp_path / "build" / "x86" / "tokenizer.json").is_file()
