"""nlpress: a compiler that makes NLP models smaller and faster.

Example:
    import nlpress
    result = nlpress.optimize("minilm-l6", "fold,identity-elim,cleanup")
    artifact = nlpress.compile("minilm-l6", "x86", "build/x86")
    outputs = nlpress.load(artifact).run(None, feeds)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from nlpress.compiler import compile, optimize
from nlpress.targets.runtime import SessionOptions

if TYPE_CHECKING:
    import os

    from nlpress.targets.runtime import Session

try:
    __version__ = version("nlpress")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
    __version__ = "0.0.0"


def load(
    path: str | os.PathLike[str],
    options: SessionOptions | None = None,
    *,
    threads: int | None = None,
    pin: bool | None = None,
    device_id: int = 0,
) -> Session:
    """Load a compiled artifact folder; returns a session with ONNX Runtime's `run`.

    Args:
        path: The artifact folder.
        options: How the session runs its kernels (default `SessionOptions()`).
        threads: Threads of the CPU kernels (overrides `options`; 0: one per usable CPU).
        pin: Bind each CPU worker thread to one core (overrides `options`; default off).
        device_id: The GPU that runs a cuda artifact.

    """
    from nlpress.targets.runtime import load as load_artifact

    return load_artifact(path, options, threads=threads, pin=pin, device_id=device_id)


__all__ = ["SessionOptions", "__version__", "compile", "load", "optimize"]
