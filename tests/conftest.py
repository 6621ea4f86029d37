"""Shared fixtures: the zoo models (exported once per cache) and the shared graph builder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


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
