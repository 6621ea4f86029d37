"""The deployment runtime: load an artifact folder and run it like an ONNX Runtime session.

This module needs only numpy and the TVM runtime (no onnx, no nlpress compiler), so that a
deployment, or an aarch64 Python under emulation, can load it on its own, even by file path.

    session = load("build/x86")
    [embeddings] = session.run(None, {"input_ids": ids, "attention_mask": mask, ...})
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
LIBRARY = "model.so"
MANIFEST = "manifest.json"

try:  # Inside nlpress, feed errors are usage errors; a bare deployment has no nlpress.ir.
    from nlpress.ir.errors import NlpressError as _DamageErrorBase
    from nlpress.ir.errors import UsageError as _FeedErrorBase
except ImportError:  # pragma: no cover - exercised under emulation
    _FeedErrorBase = ValueError  # type: ignore[misc,assignment]
    _DamageErrorBase = RuntimeError  # type: ignore[misc,assignment]


class ArtifactError(_FeedErrorBase):
    """An artifact folder that is missing, incomplete, or of an unknown format."""


class FeedError(_FeedErrorBase):
    """Feeds whose names, dtypes or shapes do not match the artifact's inputs."""


class DamagedArtifactError(_DamageErrorBase):
    """An artifact whose library differs from what its manifest recorded (size or sha256)."""


@dataclass(frozen=True)
class NodeArg:
    """An input or output as ONNX Runtime describes it: name, shape (ints or dim names), type."""

    name: str
    shape: list[int | str | None]
    dtype: str

    @property
    def type(self) -> str:
        """The ONNX Runtime type string, e.g. "tensor(int64)"."""
        return f"tensor({'float' if self.dtype == 'float32' else self.dtype})"


class Session:
    """A loaded artifact: `run(output_names, feeds)` returns numpy arrays."""

    def __init__(self, path: str | os.PathLike[str], device_id: int = 0) -> None:
        """Load the artifact folder `path`; cuda artifacts run on GPU `device_id`."""
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self._inputs = [_node_arg(v) for v in self.manifest["inputs"]]
        self._index_ranges = {
            str(v["name"]): (int(v["index_range"][0]), int(v["index_range"][1]))
            for v in self.manifest["inputs"]
            if "index_range" in v
        }
        self._outputs = [_node_arg(v) for v in self.manifest["outputs"]]
        self._device_kind = self.manifest["target"]["device"]
        self._vm, self._device = _load_vm(self.path / LIBRARY, self._device_kind, device_id)

    def get_inputs(self) -> list[NodeArg]:
        """The inputs, in the model's order."""
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        """The outputs, in the model's order."""
        return list(self._outputs)

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        """Run the model; returns the named outputs (all when None), in the order asked.

        Raises:
            FeedError: A missing or unknown feed, a wrong dtype, rank, or static dim, two
                sizes for one symbolic dim, a dim over the artifact's recorded limit, or a
                token id outside its table; or an unknown output name.

        """
        wanted = self._output_indices(output_names)
        arrays = check_feeds(self._inputs, feeds, self._index_ranges, dim_limits(self.manifest))
        import tvm

        args = [tvm.runtime.tensor(a, self._device) for a in arrays]
        result = self._vm["main"](*args)
        values = _flatten(result)
        return [values[i].numpy() for i in wanted]

    def _output_indices(self, names: Sequence[str] | None) -> list[int]:
        known = [o.name for o in self._outputs]
        if names is None:
            return list(range(len(known)))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise FeedError(f"unknown output {unknown[0]!r}; outputs: {', '.join(known)}")
        return [known.index(n) for n in names]


def load(path: str | os.PathLike[str], device_id: int = 0) -> Session:
    """Load a compiled artifact folder."""
    return Session(path, device_id)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an artifact folder, checked for format version and completeness."""
    folder = Path(path)
    manifest_path, library = folder / MANIFEST, folder / LIBRARY
    if not manifest_path.is_file() or not library.is_file():
        raise ArtifactError(f"{folder}: not an nlpress artifact (needs {MANIFEST} and {LIBRARY})")
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{folder}: artifact format {version!r}; this runtime reads format {FORMAT_VERSION}"
        )
    check_library(library, manifest.get("library"))
    return manifest


def check_library(library: Path, recorded: Any) -> None:
    """Compare the library with the size and sha256 its manifest recorded, before loading it.

    A truncated or overwritten library would otherwise crash the process when it is mapped
    (SIGBUS) or run. A manifest from before these facts were recorded gets `check_elf`, which
    finds truncation but not changed bytes.

    Raises:
        DamagedArtifactError: The library's size or checksum differs from the record.

    """
    if not isinstance(recorded, Mapping):
        check_elf(library)
        return
    size, digest = recorded.get("bytes"), recorded.get("sha256")
    actual = library.stat().st_size
    if isinstance(size, int) and actual != size:
        raise DamagedArtifactError(
            f"{library}: {actual} bytes, but the manifest records {size}: the library is "
            "damaged (truncated or replaced); compile the artifact again"
        )
    if isinstance(digest, str) and library_facts(library)["sha256"] != digest:
        raise DamagedArtifactError(
            f"{library}: its sha256 differs from the manifest's: the library is damaged; "
            "compile the artifact again"
        )


def check_elf(library: Path) -> None:
    """Check that a 64-bit little-endian ELF file holds every header and segment it names.

    A library cut short maps without complaint and then faults (SIGBUS) on the first page past
    its end; its headers still name the missing bytes.

    Raises:
        DamagedArtifactError: Not an ELF file, or one whose tables or segments pass its end.

    """
    size = library.stat().st_size
    with open(library, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF":
            raise DamagedArtifactError(f"{library}: not a shared library (no ELF header)")
        if len(header) < 64:
            raise DamagedArtifactError(f"{library}: {size} bytes, cut inside its ELF header")
        if header[4] != 2 or header[5] != 1:
            return  # not the 64-bit little-endian layout read below
        phoff, shoff = struct.unpack_from("<QQ", header, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", header, 0x36)
        ends = [phoff + phentsize * phnum, shoff + shentsize * shnum]
        if ends[0] <= size and phentsize >= 56:
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                p_type, _, offset = struct.unpack_from("<IIQ", table, i * phentsize)
                filesz = struct.unpack_from("<Q", table, i * phentsize + 32)[0]
                if p_type == 1:  # PT_LOAD
                    ends.append(offset + filesz)
    if max(ends) > size:
        raise DamagedArtifactError(
            f"{library}: {size} bytes, but its ELF headers reach byte {max(ends)}: the library "
            "is truncated; compile the artifact again"
        )


def library_facts(library: Path) -> dict[str, Any]:
    """The size and sha256 of a library file, as the manifest records them."""
    digest = hashlib.sha256()
    with open(library, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": library.stat().st_size, "sha256": digest.hexdigest()}


def dim_limits(manifest: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
    """The manifest's largest sizes of symbolic dims, with their reasons, by dim name."""
    recorded = manifest.get("dim_limits")
    if not isinstance(recorded, Mapping):
        return {}
    return {
        str(name): (int(entry["max"]), str(entry.get("reason", "")))
        for name, entry in recorded.items()
        if isinstance(entry, Mapping) and isinstance(entry.get("max"), int)
    }


def check_feeds(
    inputs: Sequence[NodeArg],
    feeds: Mapping[str, Any],
    index_ranges: Mapping[str, tuple[int, int]] | None = None,
    limits: Mapping[str, tuple[int, str]] | None = None,
) -> list[np.ndarray]:
    """The feeds as arrays in input order, after checking names, dtypes, shapes and values.

    `index_ranges` gives the valid values of the inputs that index a table (token ids);
    `limits` the largest size of symbolic dims, with the reason (`dim_limits`).
    """
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in feeds]
    extra = [n for n in feeds if n not in names]
    if missing or extra:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unknown {', '.join(extra)}"] if extra else []
        raise FeedError(f"feeds: {'; '.join(parts)}; the model's inputs: {', '.join(names)}")
    bound: dict[str, tuple[int, str]] = {}
    arrays = [_checked(arg, feeds[arg.name], bound) for arg in inputs]
    for arg, array in zip(inputs, arrays, strict=True):
        _check_limits(arg, array, limits or {})
    for arg, array in zip(inputs, arrays, strict=True):
        if index_ranges and arg.name in index_ranges and array.size:
            _check_indices(arg.name, array, *index_ranges[arg.name])
    return arrays


def _check_limits(arg: NodeArg, array: np.ndarray, limits: Mapping[str, tuple[int, str]]) -> None:
    """Symbolic dims from 1 to their limit: compiled kernels read past empty buffers."""
    for axis, (size, dim) in enumerate(zip(array.shape, arg.shape, strict=True)):
        if isinstance(dim, str) and size == 0:
            raise FeedError(f"input {arg.name}: dim {axis} ({dim}) is 0; give at least 1")
        if isinstance(dim, str) and dim in limits and size > limits[dim][0]:
            largest, reason = limits[dim]
            raise FeedError(
                f"input {arg.name}: dim {axis} ({dim}) is {size}; the model computes at most "
                f"{dim} = {largest}" + (f" ({reason})" if reason else "")
            )


def _check_indices(name: str, array: np.ndarray, low: int, high: int) -> None:
    smallest, largest = int(array.min()), int(array.max())
    if smallest < low or largest > high:
        wrong = smallest if smallest < low else largest
        raise FeedError(
            f"input {name}: value {wrong} is out of range [{low}, {high}] "
            f"(it indexes a table of {high + 1} rows)"
        )


def _checked(arg: NodeArg, value: Any, bound: dict[str, tuple[int, str]]) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != np.dtype(arg.dtype):
        raise FeedError(f"input {arg.name}: dtype {array.dtype}, expected {arg.dtype}")
    if array.ndim != len(arg.shape):
        raise FeedError(
            f"input {arg.name}: rank {array.ndim} (shape {list(array.shape)}), "
            f"expected rank {len(arg.shape)} {_shape_text(arg.shape)}"
        )
    for axis, (size, dim) in enumerate(zip(array.shape, arg.shape, strict=True)):
        if isinstance(dim, int) and size != dim:
            raise FeedError(
                f"input {arg.name}: dim {axis} is {size}, expected {dim} "
                f"(shape {list(array.shape)} vs {_shape_text(arg.shape)})"
            )
        if isinstance(dim, str):
            seen = bound.setdefault(dim, (size, arg.name))
            if seen[0] != size:
                raise FeedError(
                    f"input {arg.name}: dim {axis} ({dim}) is {size}, but {seen[1]} "
                    f"gave {dim} = {seen[0]}"
                )
    return np.ascontiguousarray(array)


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _node_arg(entry: Mapping[str, Any]) -> NodeArg:
    return NodeArg(str(entry["name"]), list(entry["shape"]), str(entry["dtype"]))


def _load_vm(library: Path, device_kind: str, device_id: int) -> tuple[Any, Any]:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    device = tvm.cuda(device_id) if device_kind == "cuda" else tvm.cpu(0)
    if device_kind == "cuda" and not device.exist:
        raise ArtifactError(f"{library.parent}: a cuda artifact, and no CUDA GPU is present")
    module = tvm.runtime.load_module(os.fspath(library))
    return VirtualMachine(module, device), device


def _flatten(result: Any) -> list[Any]:
    if hasattr(result, "numpy"):
        return [result]
    values: list[Any] = []
    for item in result:
        values.extend(_flatten(item))
    return values
