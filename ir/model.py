"""Loading and saving ONNX files, and the Model that passes rewrite.

A Model is an onnx-graphsurgeon graph plus the model-level fields that graphsurgeon does not keep
(metadata properties, doc string, and initializers no node reads, which only `cleanup` may drop).
Saving is atomic: the bytes go to a staging file beside the target (`ir/staging.py`), which is
then renamed, so an interrupted or failed save never leaves a half-written model, and the input
file is never opened for writing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from nlpress.ir.errors import ModelLoadError, NlpressError
from nlpress.ir.staging import rename_into_place, staging_dir, staging_file

Feeds = Mapping[str, np.ndarray]  # one batch of input arrays by input name

# Protobuf cannot serialize a message over 2 GiB; larger models keep their weights in a side file.
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True, eq=False)
class Model:
    """An ONNX model under compilation.

    Attributes:
        graph: The onnx-graphsurgeon graph that passes rewrite. Passes never mutate the numpy
            values of constants in place; they create new constants.
        metadata: The model's metadata properties, kept through every pass.
        doc_string: The model's doc string.
        loose_initializers: Initializers that no node or output reads (graphsurgeon drops them on
            import; nlpress keeps them until `cleanup` removes them).
    """

    graph: gs.Graph
    metadata: dict[str, str] = field(default_factory=dict)
    doc_string: str = ""
    loose_initializers: tuple[onnx.TensorProto, ...] = ()

    @classmethod
    def from_onnx(cls, proto: onnx.ModelProto) -> Model:
        """Import a ModelProto (weights already loaded) into the IR."""
        graph = gs.import_onnx(proto)
        used = {t.name for t in graph.tensors().values()}
        loose = tuple(init for init in proto.graph.initializer if init.name not in used)
        metadata = {p.key: p.value for p in proto.metadata_props}
        return cls(graph, metadata, proto.doc_string, loose)

    def to_onnx(self) -> onnx.ModelProto:
        """Export the IR to a ModelProto."""
        _pack_4bit(self.graph)
        proto: onnx.ModelProto = gs.export_onnx(self.graph, do_type_check=False)
        proto.graph.initializer.extend(self.loose_initializers)
        proto.doc_string = self.doc_string
        onnx.helper.set_model_props(proto, self.metadata)
        return proto

    def copy(self) -> Model:
        """A structural copy that a pass may rewrite freely (constant values are shared)."""
        return replace(self, graph=self.graph.copy(), metadata=dict(self.metadata))


# numpy dtypes (ml_dtypes) that ONNX stores two to a byte; graphsurgeon writes them one per byte.
_4BIT = frozenset({"int4", "uint4"})


def _pack_4bit(graph: gs.Graph) -> None:
    """Give each 4-bit constant whose values were read its packed tensor to export."""
    for tensor in graph.tensors().values():
        loaded = isinstance(tensor, gs.Constant) and isinstance(tensor._values, np.ndarray)
        if loaded and tensor.values.dtype.name in _4BIT:
            proto = onnx.numpy_helper.from_array(tensor.values, tensor.name)
            tensor.values = gs.ir.tensor.LazyValues(proto)


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and check an ONNX file, external weights included, or fail with one line naming it."""
    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(
            f"{path}: a folder, not an ONNX file (an artifact's is model.onnx; a Hugging Face "
            "folder holds config.json)"
        )
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        proto: onnx.ModelProto = onnx.load(os.fspath(path), load_external_data=True)
    except onnx.checker.ValidationError as exc:  # external data missing or outside the folder
        raise ModelLoadError(f"{path}: cannot load its weights ({_first_line(exc)})") from exc
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from exc
    _check_opset(path, proto)
    try:
        onnx.checker.check_model(proto if proto.ByteSize() < _PROTOBUF_LIMIT else os.fspath(path))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from exc
    if not proto.graph.output:
        raise ModelLoadError(f"{path}: not a valid ONNX model (the graph has no outputs)")
    return proto


def _check_opset(path: Path, proto: onnx.ModelProto) -> None:
    """Refuse an opset of the default domain newer than the onnx package knows."""
    newest = onnx.defs.onnx_opset_version()
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > newest:
            raise ModelLoadError(
                f"{path}: opset {entry.version} is newer than the ONNX opsets this nlpress "
                f"reads (up to {newest}, onnx {onnx.__version__})"
            )


def load_model(path: str | os.PathLike[str]) -> Model:
    """Read an ONNX file into the IR."""
    return Model.from_onnx(load_onnx(path))


def save_onnx(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write a ModelProto atomically; models over 2 GiB keep their weights in `<name>.data`."""
    path = Path(path)
    if proto.ByteSize() < _PROTOBUF_LIMIT:
        with staging_file(path) as tmp:
            tmp.write_bytes(proto.SerializeToString())
        return path
    # Stage both files in a private folder beside the target, then rename data first, model last.
    with staging_dir(path) as staging:
        staged = staging / path.name
        data_name = path.name + ".data"
        detached = onnx.ModelProto()
        detached.CopyFrom(proto)  # saving with external data empties the tensors it writes out
        onnx.save_model(
            detached,
            os.fspath(staged),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=0,
        )
        rename_into_place(staging / data_name, path.parent / data_name)
        rename_into_place(staged, path)
    return path


def save_model(model: Model, path: str | os.PathLike[str]) -> Path:
    """Export the IR and write it atomically."""
    return save_onnx(model.to_onnx(), path)


def copy_file(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy a file byte for byte, atomically."""
    target = Path(target)
    with staging_file(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


__all__ = [
    "Model",
    "NlpressError",
    "file_sha256",
    "load_model",
    "load_onnx",
    "save_model",
    "save_onnx",
]
