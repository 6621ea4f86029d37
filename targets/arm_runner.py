"""Run an artifact with only numpy and the TVM runtime, e.g. under an emulated aarch64 Python.

Usage: python arm_runner.py ARTIFACT OUT_DIR FEEDS.npz [FEEDS.npz ...]

Loads `runtime.py` from this file's folder by path (no nlpress package, no onnx), loads the
artifact once, runs it on each feeds file in turn, and writes output i of run k to
OUT_DIR/<k>/<i>.npy (outputs in the model's order).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np


def _runtime() -> ModuleType:
    path = Path(__file__).with_name("runtime.py")
    spec = importlib.util.spec_from_file_location("nlpress_artifact_runtime", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    """Run the artifact; returns the exit code."""
    if len(argv) < 3:
        sys.stderr.write(__doc__ or "")
        return 2
    artifact, out_dir, *feed_files = argv
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    session = _runtime().load(artifact)
    for run, feeds_path in enumerate(feed_files):
        with np.load(feeds_path) as archive:
            feeds = {name: archive[name] for name in archive.files}
        outputs = session.run(None, feeds)
        folder = Path(out_dir) / str(run)
        folder.mkdir(parents=True, exist_ok=True)
        for index, value in enumerate(outputs):
            np.save(folder / f"{index}.npy", value)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
