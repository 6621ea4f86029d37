"""Run an arm artifact on this x86 host, under qemu-user with an aarch64 Python and TVM runtime."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nlpress.ir import Feeds

RUNNER = Path(__file__).with_name("arm_runner.py")


def run_emulated(
    artifact: str | os.PathLike[str], feeds: Sequence[Feeds], timeout: float = 1800
) -> list[list[np.ndarray]]:
    """Run `artifact` on each feeds mapping with the aarch64 runtime, loading it once.

    The emulated Python sees only numpy and the TVM runtime wheels (TVM_USE_RUNTIME_LIB=1), as a
    deployment would.

    Returns:
        For each feeds mapping, the outputs in the model's order.

    Raises:
        EmulationError: Emulation is not set up here, or the run failed.

    """
    from nlpress.targets import emulation

    with tempfile.TemporaryDirectory(prefix="nlpress-arm-") as scratch:
        out_dir = Path(scratch) / "out"
        paths = []
        for index, one in enumerate(feeds):
            path = Path(scratch) / f"feeds{index}.npz"
            arrays: dict[str, Any] = {name: np.asarray(v) for name, v in one.items()}
            np.savez(path, **arrays)
            paths.append(os.fspath(path))
        emulation.run_python(
            RUNNER,
            [os.fspath(Path(artifact).resolve()), os.fspath(out_dir), *paths],
            env={"TVM_USE_RUNTIME_LIB": "1"},
            timeout=timeout,
        )
        results = []
        for index in range(len(paths)):
            folder = out_dir / str(index)
            count = len(list(folder.glob("*.npy")))
            results.append([np.load(folder / f"{k}.npy") for k in range(count)])
        return results
