"""The README's two set-up commands are the ones that work."""

import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _shell_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.*?)```", readme, flags=re.DOTALL)


def test_readme_test_command_is_what_ci_runs():
    test_command = _shell_blocks()[1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_main_job_runs(tmp_path):
    install_and_run = _shell_blocks()[0].strip()
    steps = [step.strip() for step in install_and_run.split("&&")]
    assert steps[0].startswith("pip install -e")
    for step in steps[1:]:
        done = subprocess.run(shlex.split(step), cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, f"{step}: {done.stderr}"
    assert done.stdout.startswith("last_hidden_state: float32[1,")
