"""nlpress.ir: the ONNX-based IR: load/save, graph helpers, dumps and diffs, verification."""

from nlpress.ir.errors import (
    BudgetNotMet,
    ModelLoadError,
    NlpressError,
    UsageError,
    VerificationError,
)
from nlpress.ir.model import (
    Feeds,
    Model,
    copy_file,
    file_sha256,
    load_model,
    load_onnx,
    save_model,
    save_onnx,
)

__all__ = [
    "BudgetNotMet",
    "Feeds",
    "Model",
    "ModelLoadError",
    "NlpressError",
    "UsageError",
    "VerificationError",
    "copy_file",
    "file_sha256",
    "load_model",
    "load_onnx",
    "save_model",
    "save_onnx",
]
