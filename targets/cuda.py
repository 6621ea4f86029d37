"""Ahead-of-time CUDA device code: nvcc fatbins inside the library instead of CUDA C source.

TVM 0.27's wheel, on a machine without the CUDA driver, builds a placeholder CUDA module that
holds the generated CUDA C source (format "cuda"); the CUDA runtime would compile it when the
library is first loaded, which needs a compiler on the deployment machine. At export, nlpress
compiles that source with nvcc into a fatbin (a cubin for the asked `sm_XX` plus its PTX) and
packs the module as format "fatbin" in the byte layout TVM's CUDA runtime loads (its
`ffi.Module.load_from_bytes.cuda`: format, function table, binary). `device_code` reads the
fatbins back out of a built library, so tests can check what it really holds.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlpress.ir import NlpressError
from nlpress.targets.target import Target

log = logging.getLogger(__name__)

FATBIN_MAGIC = 0xBA55ED50
_FATBIN_KINDS = {1: "ptx", 2: "elf"}
_BLOB_SYMBOL = "__tvm_ffi__library_bin"


class CudaBuildError(NlpressError):
    """nvcc failed, or the library's CUDA module is not in the layout nlpress expects."""


@dataclass(frozen=True)
class DeviceImage:
    """One image of a fatbin: a cubin (kind "elf") or PTX, for one architecture."""

    kind: str
    arch: str
    size: int
    kernels: tuple[str, ...] = ()


def export(executable: Any, target: Target, path: Path, workspace: Path) -> dict[str, Any]:
    """Export a CUDA build with its kernels compiled to a fatbin for `target.arch`.

    Returns:
        Facts for the manifest: format, arch, fatbin size, kernel count.

    """
    facts: dict[str, Any] = {}

    def pack(module: Any, _system_lib: bool, _prefix: str, workspace_dir: str) -> str:
        blob, facts["device_code"] = _aot_blob(module, target)
        return _write_blob_asm(blob, Path(workspace_dir))

    try:
        executable.export_library(os.fspath(path), fpack_imports=pack, workspace_dir=workspace)
    except CudaBuildError:
        raise
    except Exception as exc:
        raise CudaBuildError(f"linking the cuda library failed: {exc}") from exc
    return facts


def compile_fatbin(source: str, arch: str) -> bytes:
    """Compile CUDA C source with nvcc to a fatbin holding a cubin for `arch` and its PTX."""
    import tvm
    from tvm.support import nvcc

    number = arch.removeprefix("sm_")
    gencode = [
        "-gencode", f"arch=compute_{number},code=sm_{number}",
        "-gencode", f"arch=compute_{number},code=compute_{number}",
    ]  # fmt: skip
    with tvm.target.Target({"kind": "cuda", "arch": arch}):
        try:
            return bytes(nvcc.compile_cuda(source, "fatbin", arch=gencode, compiler="nvcc"))
        except (RuntimeError, OSError) as exc:
            tail = str(exc).strip().splitlines()[-5:]
            raise CudaBuildError(f"nvcc failed for {arch}: {' / '.join(tail)}") from exc


def device_code(library: str | os.PathLike[str]) -> list[DeviceImage]:
    """Every device image in the fatbins that a library file holds."""
    data = Path(library).read_bytes()
    images: list[DeviceImage] = []
    magic = struct.pack("<I", FATBIN_MAGIC)
    start = data.find(magic)
    while start >= 0:
        images.extend(_fatbin_images(data, start))
        start = data.find(magic, start + 4)
    return images


def packed_modules(library: str | os.PathLike[str]) -> list[tuple[str, str | None]]:
    """The (kind, format) of each module packed in a library's blob, as TVM's loader reads it.

    The format is the first field of a CUDA module's record ("fatbin" after nlpress's export,
    "cuda" for TVM's source fallback); None for other kinds.
    """
    blob = _symbol_bytes(Path(library).read_bytes(), _BLOB_SYMBOL)
    reader = _Reader(blob)
    reader.u64()
    for _ in range(2):
        count = reader.u64()
        reader.pos += 8 * count
    modules: list[tuple[str, str | None]] = []
    while reader.pos < len(blob):
        kind = reader.string()
        record = b"" if kind == "_lib" else reader.bytes()
        modules.append((kind, _Reader(record).string() if kind == "cuda" else None))
    return modules


def _symbol_bytes(elf: bytes, symbol: str) -> bytes:
    """The bytes of a defined data symbol of a 64-bit little-endian ELF shared library."""
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind not in (2, 11):  # SHT_SYMTAB, SHT_DYNSYM
            continue
        strings = sections[link][4]
        for at in range(offset, offset + size, entsize):
            name_at, _, _, shndx, value, length = struct.unpack_from("<IBBHQQ", elf, at)
            end = elf.index(b"\0", strings + name_at)
            if elf[strings + name_at : end].decode() == symbol and 0 < shndx < shnum:
                section = sections[shndx]
                start = section[4] + value - section[3]
                return elf[start : start + length]
    raise CudaBuildError(f"no symbol {symbol} in the library")


def _fatbin_images(data: bytes, start: int) -> Iterator[DeviceImage]:
    _, _, header_size, fat_size = struct.unpack_from("<IHHQ", data, start)
    offset, end = start + header_size, start + header_size + fat_size
    while offset + 32 <= min(end, len(data)):
        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, offset)
        arch = struct.unpack_from("<I", data, offset + 28)[0]
        body = data[offset + entry_header : offset + entry_header + payload]
        name = _FATBIN_KINDS.get(kind, str(kind))
        kernels = _elf_kernels(body) if name == "elf" else ()
        yield DeviceImage(name, f"sm_{arch}", payload, kernels)
        if entry_header == 0:
            break
        offset += entry_header + payload


def _elf_kernels(elf: bytes) -> tuple[str, ...]:
    """The kernel names of a cubin: its `.text.<kernel>` sections."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:  # 64-bit ELF only
        return ()
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    names_header = shoff + shstrndx * shentsize
    (names_offset,) = struct.unpack_from("<Q", elf, names_header + 0x18)
    kernels = []
    for index in range(shnum):
        (name_at,) = struct.unpack_from("<I", elf, shoff + index * shentsize)
        end = elf.index(b"\0", names_offset + name_at)
        name = elf[names_offset + name_at : end].decode(errors="replace")
        if name.startswith(".text."):
            kernels.append(name.removeprefix(".text."))
    return tuple(kernels)


def _aot_blob(module: Any, target: Target) -> tuple[bytes, dict[str, Any]]:
    """The library blob of `module` with every CUDA source module replaced by a fatbin one."""
    import tvm_ffi

    pack = tvm_ffi.get_global_func("runtime.ModulePackImportsToTensor")
    blob = pack(module).numpy().tobytes()
    sources = [m.inspect_source("cuda") for m in _cuda_modules(module)]
    reader = _Reader(blob)
    size = reader.u64()
    if size != len(blob) - 8:
        raise CudaBuildError("unexpected TVM library blob layout (size header)")
    head_start = reader.pos
    for _ in range(2):  # the import tree: row pointers, then child indices
        count = reader.u64()
        reader.pos += 8 * count
    out = bytearray(blob[head_start : reader.pos])
    images: list[DeviceImage] = []
    while reader.pos < len(blob):
        kind = reader.string()
        out += _string(kind)
        if kind == "_lib":
            continue
        record = reader.bytes()
        if kind == "cuda":
            record, made = _fatbin_record(record, sources, target)
            images.extend(made)
        out += _bytes(record)
    facts = {
        "format": "fatbin",
        "arch": target.arch,
        "images": [f"{i.kind}:{i.arch}" for i in images],
        "kernels": sum(len(i.kernels) for i in images if i.kind == "elf"),
    }
    return struct.pack("<Q", len(out)) + bytes(out), facts


def _fatbin_record(
    record: bytes, sources: list[str], target: Target
) -> tuple[bytes, list[DeviceImage]]:
    reader = _Reader(record)
    fmt = reader.string()
    if fmt != "cuda":
        raise CudaBuildError(f"CUDA module in format {fmt!r}; nlpress expects CUDA source")
    for source in sources:
        code = source.encode()
        if record.endswith(struct.pack("<Q", len(code)) + code):
            table = record[reader.pos : len(record) - len(code) - 8]
            fatbin = compile_fatbin(source, str(target.arch))
            made = list(_fatbin_images(fatbin, 0))
            log.debug("fatbin for %s: %d bytes, %s", target.arch, len(fatbin), made)
            return _string("fatbin") + table + _bytes(fatbin), made
    raise CudaBuildError("CUDA module source not found in the library blob")


def _cuda_modules(module: Any) -> Iterator[Any]:
    seen: set[int] = set()
    stack = [module]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current.kind == "cuda":
            yield current
        stack.extend(current.imports)


def _write_blob_asm(blob: bytes, workspace: Path) -> str:
    """An assembler file that defines the blob symbol TVM's loader looks up."""
    data = workspace / "devc.bin"
    data.write_bytes(blob)
    asm = workspace / "devc.S"
    asm.write_text(
        "\t.section .rodata\n"
        f"\t.globl {_BLOB_SYMBOL}\n"
        f"\t.type {_BLOB_SYMBOL}, @object\n"
        "\t.balign 16\n"
        f"{_BLOB_SYMBOL}:\n"
        f'\t.incbin "{data}"\n'
        f"\t.size {_BLOB_SYMBOL}, {len(blob)}\n"
        '\t.section .note.GNU-stack,"",@progbits\n'
    )
    return os.fspath(asm)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u64(self) -> int:
        value: int = struct.unpack_from("<Q", self.data, self.pos)[0]
        self.pos += 8
        return value

    def bytes(self) -> bytes:
        size = self.u64()
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value

    def string(self) -> str:
        return self.bytes().decode()


def _string(text: str) -> bytes:
    return _bytes(text.encode())


def _bytes(value: bytes) -> bytes:
    return struct.pack("<Q", len(value)) + value
