"""Local Hugging Face and sentence-transformers folders as models: read here, exported once.

A folder is a Hugging Face model when it holds `config.json` and weights (`model.safetensors`,
or `pytorch_model.bin`), and a sentence-transformers model when it holds `modules.json`: its
Transformer module names the subfolder with `config.json` ("" for the folder itself), its
Pooling module the pooling (`pooling_mode_mean_tokens` or `pooling_mode_cls_token`), and a
Normalize module L2 normalization. The tokenizer is the folder's `tokenizer.json`, else the fast
tokenizer that transformers builds from its vocabulary files, saved beside the export.

Nothing is downloaded: a name that is not a local folder is an error, and remote code in a
folder is not run. The export (`export.export_pretrained`) is cached by the sha256 of the
folder's files, as zoo models are, so a changed folder is exported again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlpress.ir import UsageError

CONFIG = "config.json"
MODULES = "modules.json"
TOKENIZER = "tokenizer.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TRANSFORMER, POOLING, NORMALIZE = (
    f"sentence_transformers.models.{m}" for m in ("Transformer", "Pooling", "Normalize")
)
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


@dataclass(frozen=True)
class Folder:
    """A model folder, read.

    Attributes:
        root: The folder given.
        transformer: The folder holding config.json and the weights.
        tokenizer: Its tokenizer.json, if it has one.
        pooling: A sentence-transformers folder's pooling ("mean" or "cls"); None otherwise.
        normalize: Whether a sentence-transformers folder L2-normalizes its embeddings.
        max_length: The longest text in tokens that the folder declares, if it declares one.
    """

    root: Path
    transformer: Path
    tokenizer: Path | None
    pooling: str | None
    normalize: bool
    max_length: int | None

    @property
    def kind(self) -> str:
        """The folder's kind: sentence-transformers or Hugging Face."""
        return "sentence-transformers" if (self.root / MODULES).is_file() else "Hugging Face"


def is_model_folder(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder that holds config.json or modules.json."""
    folder = Path(path)
    return folder.is_dir() and any((folder / name).is_file() for name in (CONFIG, MODULES))


def read_folder(path: str | os.PathLike[str]) -> Folder:
    """Read a model folder's layout, or fail with one line saying what is missing."""
    root = Path(path)
    modules = _json(root / MODULES) if (root / MODULES).is_file() else None
    listed = modules if isinstance(modules, list) else []
    types = {str(m.get("type")): str(m.get("path", "")) for m in listed if isinstance(m, dict)}
    if modules is not None and TRANSFORMER not in types:
        raise UsageError(f"{root}: its {MODULES} has no {TRANSFORMER} module to export")
    transformer = root / types.get(TRANSFORMER, "")
    if not (transformer / CONFIG).is_file():
        raise UsageError(f"{transformer}: no {CONFIG}; a Hugging Face model folder needs one")
    if not any((transformer / name).is_file() for name in WEIGHTS):
        raise UsageError(f"{transformer}: no weights ({' or '.join(WEIGHTS)})")
    pooling = _pooling(root / types[POOLING]) if POOLING in types else None
    found = [d / TOKENIZER for d in (transformer, root) if (d / TOKENIZER).is_file()]
    tokenizer = found[0] if found else None
    length = _max_length(transformer)
    return Folder(root, transformer, tokenizer, pooling, NORMALIZE in types, length)


def content_sha256(folder: Folder) -> str:
    """The sha256 of the folder's files (names and bytes; not hidden ones such as .git's)."""
    digest = hashlib.sha256()
    files = (p for p in folder.root.rglob("*") if p.is_file())
    for file in sorted(p for p in files if not _hidden(p.relative_to(folder.root))):
        digest.update(file.relative_to(folder.root).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def hub_id_error(model: str) -> UsageError | None:
    """The error for a MODEL that looks like a hub id (`owner/name`) but is no local path."""
    parts = model.split("/")
    if len(parts) != 2 or not all(parts) or os.path.exists(model) or model.endswith(".onnx"):
        return None
    return UsageError(
        f"{model}: no such file or folder; nlpress reads local models only (download the "
        "model's folder first and give its path)"
    )


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _pooling(folder: Path) -> str:
    config = _json(folder / CONFIG)
    items = config.items() if isinstance(config, dict) else ()
    chosen = [key for key, on in items if key.startswith("pooling_mode_") and on]
    if len(chosen) != 1 or chosen[0] not in POOLING_MODES:
        raise UsageError(
            f"{folder / CONFIG}: nlpress pools by the mean or the cls token, one of them; this "
            f"config asks for {', '.join(chosen) or 'none'}"
        )
    return POOLING_MODES[chosen[0]]


def _max_length(transformer: Path) -> int | None:
    """The max_seq_length in the transformer's folder, where sentence-transformers reads it."""
    config = transformer / "sentence_bert_config.json"
    value = _json(config).get("max_seq_length") if config.is_file() else None
    return value if isinstance(value, int) and value > 0 else None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: not readable JSON ({exc})") from exc
