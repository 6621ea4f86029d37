"""The deployment runtime: load an artifact folder and run it like an ONNX Runtime session.

This module needs only numpy and the TVM runtime (no onnx, no nlpress compiler), so that a
deployment, or an aarch64 Python under emulation, can load it on its own, even by file path.

    session = load("build/x86", threads=2)
    [embeddings] = session.run(None, {"input_ids": ids, "attention_mask": mask, ...})

CPU kernels run on TVM's thread pool, one per calling thread. Left alone, TVM sizes it from
TVM_NUM_THREADS, else half the machine's logical CPUs (it assumes hyper-threading), and pins
each worker to one core. A session configures the pool of the thread that runs it instead,
before its first kernel (`SessionOptions`): by default one thread per CPU that this process
may use (its affinity mask, as a container or `taskset` sets it), or TVM_NUM_THREADS when the
user set it; threads not pinned, so that a worker whose core another process takes is moved
by the OS instead of stalling every parallel loop that waits for it. The artifact's own
launcher (`targets/parallel.c`) runs the loops: a worker that the scheduler wakes on the CPU
of its caller moves to another of its CPUs while the run lasts.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
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
class SessionOptions:
    """How a session runs its CPU kernels, like ONNX Runtime's SessionOptions.

    Attributes:
        threads: Threads of the parallel kernels; 0: TVM_NUM_THREADS if the user set it,
            else one per CPU in this process's affinity mask.
        pin: Bind each worker thread to one CPU (TVM's own default). Off, the OS moves a
            worker whose core is busy, which matters on a shared machine.

    """

    threads: int = 0
    pin: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int):
            raise FeedError(f"threads must be an int, not {self.threads!r}")
        if self.threads < 0:
            raise FeedError(f"threads must be 0 (automatic) or more, not {self.threads}")

    def resolved_threads(self) -> int:
        """The thread count these options give on this machine now."""
        if self.threads:
            return self.threads
        user = os.environ.get("TVM_NUM_THREADS", "").strip()
        if user.isdigit() and int(user) > 0:
            return int(user)
        return len(usable_cpus())


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask), in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity masks
        return list(range(os.cpu_count() or 1))


# TVM's thread pool affinity modes (runtime/threading_backend.h).
_ONE_CORE_PER_THREAD, _THREADS_SHARE_ALL_CORES = -2, -3
_configured = threading.local()


def configure_threads(options: SessionOptions, threads: int = 0) -> int:
    """Configure TVM's thread pool of the calling thread for `options`; returns its threads.

    TVM creates a thread's pool on its first configuration, with one worker per CPU it is
    given; every usable CPU is given (each thread may run on any of them, so the calling
    thread's own affinity is left as it was), repeated when more threads are asked. A later
    configuration can use fewer workers than the pool has, never more. `threads`, when given,
    is the count already resolved for `options` (a session's, at load: resolving reads the
    environment and the affinity mask, a system call, on every run otherwise).
    """
    threads = threads or options.resolved_threads()
    wanted = (threads, options.pin)
    if getattr(_configured, "config", None) == wanted:
        return threads
    import tvm

    cpus = usable_cpus()
    listed = [str(cpus[i % len(cpus)]) for i in range(max(threads, len(cpus)))]
    mode = _ONE_CORE_PER_THREAD if options.pin else _THREADS_SHARE_ALL_CORES
    tvm.get_global_func("runtime.config_threadpool")(mode, threads, listed)
    _configured.config = wanted
    return threads


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


@dataclass(frozen=True)
class ModelMetadata:
    """The model's metadata properties, as ONNX Runtime's `get_modelmeta()` holds them."""

    custom_metadata_map: dict[str, str]


class Session:
    """A loaded artifact: `run(output_names, feeds)` returns numpy arrays."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: SessionOptions | None = None,
        *,
        device_id: int = 0,
    ) -> None:
        """Load the artifact folder `path`; cuda artifacts run on GPU `device_id`."""
        self._read(path, options)
        check_cpu(self.manifest, self.path)
        recorded = self.manifest.get("library")
        digest = recorded.get("sha256") if isinstance(recorded, Mapping) else None
        self._vm, self._device = _load_vm(
            _fresh(self.path / LIBRARY, digest), self._device_kind, device_id
        )
        self.threads = configure_threads(self.options)
        self.launcher = "tvm"
        if self._device_kind == "cpu" and not self.options.pin:
            self.launcher = _use_nlpress_launcher(self.path / LIBRARY, self.threads)

    def _read(self, path: str | os.PathLike[str], options: SessionOptions | None) -> None:
        """Read the manifest: the inputs, outputs and limits that feeds are checked against."""
        self.path = Path(path)
        self.options = options or SessionOptions()
        self.manifest = read_manifest(self.path)
        self._inputs = [_node_arg(v) for v in self.manifest["inputs"]]
        self._index_ranges = {
            str(v["name"]): (int(v["index_range"][0]), int(v["index_range"][1]))
            for v in self.manifest["inputs"]
            if "index_range" in v
        }
        self._outputs = [_node_arg(v) for v in self.manifest["outputs"]]
        self._device_kind = self.manifest["target"]["device"]
        self._lock = threading.Lock()
        self._tokenizers: dict[str, Any] = {}

    def get_inputs(self) -> list[NodeArg]:
        """The inputs, in the model's order."""
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        """The outputs, in the model's order."""
        return list(self._outputs)

    def get_modelmeta(self) -> ModelMetadata:
        """The compiled model's metadata properties (among them the embedding output's name)."""
        return ModelMetadata(dict(self.manifest.get("metadata", {})))

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, Any]) -> list[np.ndarray]:
        """Run the model; returns the named outputs (all when None), in the order asked.

        Raises:
            FeedError: A missing or unknown feed, a wrong dtype, rank, or static dim, two
                sizes for one symbolic dim, a dim over the artifact's recorded limit, or a
                token id outside its table; or an unknown output name.

        """
        wanted = self._output_indices(output_names)
        arrays = check_feeds(self._inputs, feeds, self._index_ranges, dim_limits(self.manifest))
        with self._lock:  # TVM's virtual machine keeps one register file: one run at a time
            return self._invoke(arrays, wanted)

    def _invoke(self, arrays: Sequence[np.ndarray], wanted: Sequence[int]) -> list[np.ndarray]:
        """Call the model's main function on checked feeds; returns the outputs `wanted`."""
        configure_threads(self.options, self.threads)  # the pool of the calling thread
        values = _flatten(self._vm["main"](*self._tensors(arrays)))
        return [_numpy(values[i], arrays) for i in wanted]

    def kernel_times(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """One run with a clock around every kernel call (see `targets/profile.py`)."""
        from nlpress.targets.profile import kernel_times

        arrays = check_feeds(self._inputs, feeds, self._index_ranges, dim_limits(self.manifest))
        configure_threads(self.options, self.threads)
        with self._lock:
            return kernel_times(self._vm, self._tensors(arrays))

    def _tensors(self, arrays: Sequence[np.ndarray]) -> list[Any]:
        """The feeds as TVM tensors: on the CPU, 64-byte aligned numpy memory lent by DLPack.

        The kernels assume TVM's 64-byte alignment; `tvm.runtime.tensor` allocates and copies
        (about 14 us a feed, a visible share of a short sentence's run), lending costs 0.4 us.
        """
        import tvm

        if self._device_kind != "cpu":
            return [tvm.runtime.tensor(a, self._device) for a in arrays]
        return [tvm.runtime.from_dlpack(_aligned(a)) for a in arrays]

    def encode(
        self,
        sentences: Sequence[str],
        batch_size: int = 32,
        normalize: bool | None = None,
        tokenizer: str | os.PathLike[str] | None = None,
    ) -> np.ndarray:
        """Sentence embeddings, float32 [n, hidden], in the order of `sentences`.

        Tokenizes with the artifact's tokenizer.json (or `tokenizer`, a tokenizer.json file),
        runs batches of `batch_size` padded inside, and reads the artifact's pooled output, or
        mean-pools its embedding output (named in its metadata) over the attention mask
        (`targets/encode.py`).
        `normalize` None L2-normalizes as the compiled pooling does; True or False decides.

        Raises:
            ArtifactError: The artifact carries no tokenizer and none was given.
            FeedError: Sentences that are not a list of strings, or a bad batch size.

        """
        from nlpress.targets import encode

        settings = encode.Encoder.from_manifest(self.manifest)
        try:
            return encode.encode(
                self,
                self._tokenizer(tokenizer, settings.tokenizer),
                sentences,
                encoder=settings,
                batch_size=batch_size,
                normalize=normalize,
                limits=dim_limits(self.manifest),
            )
        except encode.EncodeError as exc:
            raise FeedError(str(exc)) from exc

    def _tokenizer(self, given: str | os.PathLike[str] | None, carried: str | None) -> Any:
        """The tokenizer `given`, else the one the artifact carries, read once."""
        from nlpress.targets.encode import EncodeError, load_tokenizer

        path = os.fspath(given) if given is not None else None
        if path is None and carried is not None:
            path = os.fspath(self.path / carried)
        if path is None:
            raise ArtifactError(
                f"{self.path}: the artifact carries no tokenizer (no tokenizer.json): compile "
                "it with --tokenizer tokenizer.json, or give encode(..., tokenizer=FILE)"
            )
        if path not in self._tokenizers:
            try:
                self._tokenizers[path] = load_tokenizer(path)
            except EncodeError as exc:
                raise ArtifactError(str(exc)) from exc
        return self._tokenizers[path]

    def _output_indices(self, names: Sequence[str] | None) -> list[int]:
        known = [o.name for o in self._outputs]
        if names is None:
            return list(range(len(known)))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise FeedError(f"unknown output {unknown[0]!r}; outputs: {', '.join(known)}")
        return [known.index(n) for n in names]


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
    return Session(path, session_options(options, threads=threads, pin=pin), device_id=device_id)


def session_options(
    options: SessionOptions | None = None, *, threads: int | None = None, pin: bool | None = None
) -> SessionOptions:
    """`options` (default SessionOptions()) with the given fields replaced."""
    base = options or SessionOptions()
    return replace(
        base,
        threads=base.threads if threads is None else threads,
        pin=base.pin if pin is None else pin,
    )


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


def check_cpu(manifest: Mapping[str, Any], folder: Path) -> None:
    """Refuse, before loading its library, an artifact whose code this CPU cannot run.

    Raises:
        ArtifactError: The artifact is for another architecture, or needs CPU features
            (the manifest's "code.features") that this CPU lacks.

    """
    code = manifest.get("code") or {}
    arch = code.get("arch")
    if not arch:
        return
    machine = platform.machine().lower()
    here = {"x86_64": "x86", "amd64": "x86", "aarch64": "aarch64", "arm64": "aarch64"}.get(machine)
    if here is not None and here != arch:
        raise ArtifactError(f"{folder}: an {arch} artifact; this machine is {machine}")
    have = host_features(arch)
    missing = [f for f in code.get("features", []) if have is not None and f not in have]
    if missing:
        built_for = code.get("cpu") or arch
        raise ArtifactError(
            f"{folder}: built for {built_for}, its code needs {', '.join(missing)}, which this "
            f"CPU ({_cpu_model()}) lacks; compile it for this machine (without --mcpu)"
        )


# aarch64 HWCAP bits (AT_HWCAP, AT_HWCAP2) of the features `targets/isa.py` records.
_HWCAPS = {
    16: {"asimd": 1, "asimdhp": 10, "asimddp": 20, "sve": 22},
    26: {"sve2": 1, "i8mm": 13, "bf16": 14},
}


def host_features(arch: str) -> set[str] | None:
    """The CPU features Linux reports for this machine, by their Linux names; None if unknown."""
    try:
        if arch == "aarch64":
            return _auxv_features(Path("/proc/self/auxv").read_bytes())
        return set(_cpuinfo_field("flags").split())
    except OSError:
        return None


def _auxv_features(auxv: bytes) -> set[str]:
    entries = dict(struct.iter_unpack("<QQ", auxv[: len(auxv) // 16 * 16]))
    return {
        name
        for key, bits in _HWCAPS.items()
        for name, bit in bits.items()
        if entries.get(key, 0) >> bit & 1
    }


def _cpuinfo_field(name: str) -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def _cpu_model() -> str:
    try:
        return _cpuinfo_field("model name") or platform.processor() or platform.machine()
    except OSError:
        return platform.machine()


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


def _use_nlpress_launcher(library: Path, threads: int) -> str:
    """Point the loaded library's parallel loops at its own launcher (`targets/parallel.c`).

    Returns "nlpress", or "tvm" for a library without the launcher (an older artifact), whose
    loops keep TVM's thread pool.
    """
    import ctypes

    try:
        handle = ctypes.CDLL(os.fspath(library), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        launch = handle.nlpress_parallel_launch
        slot = ctypes.c_void_p.in_dll(handle, "__TVMBackendParallelLaunch")
    except (OSError, AttributeError, ValueError):
        return "tvm"
    handle.nlpress_parallel_threads.argtypes = [ctypes.c_int]
    handle.nlpress_parallel_threads(threads)
    slot.value = ctypes.cast(launch, ctypes.c_void_p).value
    return "nlpress"


def _load_vm(library: Path, device_kind: str, device_id: int) -> tuple[Any, Any]:
    import tvm
    from tvm.runtime.vm import VirtualMachine

    device = tvm.cuda(device_id) if device_kind == "cuda" else tvm.cpu(0)
    if device_kind == "cuda" and not device.exist:
        raise ArtifactError(f"{library.parent}: a cuda artifact, and no CUDA GPU is present")
    module = tvm.runtime.load_module(os.fspath(library))
    return VirtualMachine(module, device), device


_loaded: dict[str, str] = {}  # the sha256 of the library first loaded from each path
_copies: list[Any] = []  # the folder of private copies, removed when the process ends


def _fresh(library: Path, digest: str | None) -> Path:
    """A path that loads this library's bytes, not an earlier library loaded from its path.

    The dynamic loader hands a process the library it already loaded from the same path, so
    an artifact compiled again into the folder of a loaded one would run the old code. A
    library whose bytes differ from those first loaded from its path is loaded from a copy
    named by its sha256 (`digest`, as the manifest records it; computed when None).
    """
    import tempfile

    key = os.path.realpath(library)
    digest = digest or library_facts(library)["sha256"]
    if _loaded.setdefault(key, digest) == digest:
        return library
    if not _copies:
        _copies.append(tempfile.TemporaryDirectory(prefix="nlpress-libraries-"))
    copy = Path(_copies[0].name) / f"{digest}{library.suffix}"
    if not copy.exists():
        shutil.copyfile(library, copy)
    return copy


def _aligned(array: np.ndarray, alignment: int = 64) -> np.ndarray:
    """`array` itself when C-contiguous and aligned to `alignment` bytes, else an aligned copy."""
    if array.flags.c_contiguous and array.ctypes.data % alignment == 0:
        return array
    raw = np.empty(array.nbytes + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    copy = raw[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    copy[...] = array
    return copy


def _numpy(value: Any, feeds: Sequence[np.ndarray]) -> np.ndarray:
    """An output as a numpy array: on the CPU, its own memory lent by DLPack, not a copy.

    The array keeps the output's storage alive, so the virtual machine never reuses it. The
    copy that `Tensor.numpy()` makes reads every byte right after the kernels' threads wrote
    it on other cores, where it still sits in their caches (about 0.1 ms a sentence). An output
    that is a feed passed through (its memory the caller's) is copied.
    """
    if value.device.dlpack_device_type() != 1:  # kDLCPU
        return np.asarray(value.numpy())
    array = np.from_dlpack(value)
    return array.copy() if any(np.may_share_memory(array, f) for f in feeds) else array


def _flatten(result: Any) -> list[Any]:
    if hasattr(result, "numpy"):
        return [result]
    values: list[Any] = []
    for item in result:
        values.extend(_flatten(item))
    return values
