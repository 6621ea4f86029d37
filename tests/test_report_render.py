"""report.html of the real minilm-l6 int8 build, rendered by headless Chromium.

Slow: the int8 compile of minilm-l6 calibrates and searches its cosine budget. Chromium draws
the page to a PNG and dumps the DOM it built, in which the sections and plots must be found.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nlpress.cli import EXIT_OK, main

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
SECTIONS = ("summary", "pipeline", "sizes", "decisions", "fidelity", "kernels", "artifact")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=300, check=True
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/setup-chromium.sh)")
def test_minilm_int8_report_renders_in_a_browser(tmp_path: Path) -> None:
    artifact = tmp_path / "minilm-int8"
    assert main(["compile", "minilm-l6", "-t", "x86", "-p", "int8", "-o", str(artifact)]) == EXIT_OK
    page = (artifact / "report.html").resolve().as_uri()

    png = tmp_path / "report.png"
    chromium(f"--screenshot={png}", "--window-size=1280,4000", page)
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 100_000  # a drawn page, not a blank one

    dom = chromium("--dump-dom", page).stdout
    found = re.findall(r'<section id="([a-z]+)"', dom)
    assert found == list(SECTIONS)
    plots = re.findall(r'<figure class="plot"><figcaption>[^<]+</figcaption><svg\b', dom)
    assert len(plots) >= 4
    for title in ("Time per pass", "Stored bytes by dtype", "Stored bytes by layer"):
        assert title in dom
    assert "/encoder/layer.5/" in dom or "layer.5/" in dom  # every block of the real model
