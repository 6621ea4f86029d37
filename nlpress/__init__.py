"""nlpress: a compiler that makes NLP models smaller and faster.

Example:
    import nlpress
    result = nlpress.optimize("minilm-l6", "fold,identity-elim,cleanup")
    artifact = nlpress.compile("minilm-l6", "x86", "build/x86")
    outputs = nlpress.load(artifact).run(None, feeds)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from nlpress.compiler import compile, optimize

if TYPE_CHECKING:
    import os

try:
    __version__ = version("nlpress")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0.0.0"


def load(path: str | os.PathLike[str]) -> Any:
    """Load a compiled artifact folder; returns a session with ONNX Runtime's `run`."""
    from nlpress.targets import load as load_artifact

    return load_artifact(path)


__all__ = ["__version__", "compile", "load", "optimize"]
