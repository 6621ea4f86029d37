"""nlpress.targets: target descriptors, lowering through TVM, artifacts and their runtime.

Only this package imports TVM. `get_target` describes where an artifact runs, `build_artifact`
lowers an optimized model into an artifact folder, and `load` runs one like an ONNX Runtime
session (the runtime needs only numpy and the TVM runtime). TVM is loaded without PyTorch
(see torchless.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nlpress.ir import Model
from nlpress.targets import torchless
from nlpress.targets.runtime import (
    ArtifactError,
    DamagedArtifactError,
    FeedError,
    NodeArg,
    Session,
    SessionOptions,
    load,
)
from nlpress.targets.target import (
    ARM_FEATURES,
    CUDA_ARCHES,
    TARGET_NAMES,
    Target,
    TargetError,
    get_target,
)

torchless.install()


def build_artifact(model: Model, target: Target, out_dir: Path, **options: Any) -> Path:
    """Lower an optimized model and write its artifact folder atomically (see artifact.py)."""
    from nlpress.targets.artifact import build_artifact as build

    return build(model, target, Path(out_dir), **options)


def check_replaceable(out_dir: Path) -> None:
    """Refuse an artifact output that is a file or a non-empty folder of something else."""
    from nlpress.targets.artifact import check_replaceable as check

    check(Path(out_dir))


__all__ = [
    "ARM_FEATURES",
    "CUDA_ARCHES",
    "TARGET_NAMES",
    "ArtifactError",
    "DamagedArtifactError",
    "FeedError",
    "NodeArg",
    "Session",
    "SessionOptions",
    "Target",
    "TargetError",
    "build_artifact",
    "check_replaceable",
    "get_target",
    "load",
]
