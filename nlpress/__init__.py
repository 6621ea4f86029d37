"""nlpress: a compiler that makes NLP models smaller and faster.

Example:
    import nlpress
    result = nlpress.optimize("minilm-l6", "fold,identity-elim,cleanup")
    artifact = nlpress.compile("minilm-l6", "x86", "build/x86", pooling="mean", normalize=True)
    embeddings = nlpress.load(artifact).encode(["nlpress compiles NLP models."])
"""

from __future__ import annotations

import importlib.metadata

from nlpress.compiler import compile, optimize
from nlpress.targets.runtime import SessionOptions, load

try:
    __version__ = importlib.metadata.version("nlpress")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - an uninstalled tree
    __version__ = "0.0.0"


__all__ = ["SessionOptions", "__version__", "compile", "load", "optimize"]


def __dir__() -> list[str]:
    """The public names (and the subpackages), not the helpers this module imports."""
    return sorted([*__all__, "ir", "models", "passes", "targets"])
