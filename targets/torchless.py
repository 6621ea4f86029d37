"""TVM without PyTorch: tvm and tvm_ffi import torch, when installed, to exchange tensors with it.

nlpress hands TVM numpy arrays only, and importing PyTorch more than doubles the start of every
process that loads TVM (a compile, `nlpress run`, a program's `nlpress.load`). While a module
of tvm or tvm_ffi initializes, `import torch` fails as if torch were not installed, and TVM
leaves its PyTorch bridges out. Any other import of torch works as usual (distillation trains
with it), and a program that imported torch before TVM keeps TVM's bridges.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

BLOCKED = "torch"
LOADING = ("tvm", "tvm_ffi")  # top-level packages whose initialization may not import BLOCKED


class TorchlessTvm(importlib.abc.MetaPathFinder):
    """Finds no module; refuses `import torch` while a module of tvm or tvm_ffi initializes."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None, /
    ) -> ModuleSpec | None:
        """None, so that the other finders look; ModuleNotFoundError for torch while TVM loads."""
        if fullname == BLOCKED and tvm_initializing():
            raise ModuleNotFoundError(f"nlpress loads TVM without {BLOCKED}", name=fullname)
        return None


def tvm_initializing() -> bool:
    """Whether a module of tvm or tvm_ffi is being imported now."""
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name.partition(".")[0] in LOADING
    )


def install() -> None:
    """Put the finder first on `sys.meta_path`, once per process."""
    if not any(isinstance(finder, TorchlessTvm) for finder in sys.meta_path):
        sys.meta_path.insert(0, TorchlessTvm())
