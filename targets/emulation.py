"""Run aarch64 TVM artifacts on an x86 host: Debian's arm64 Python 3.11 under qemu-user.

The root is built once per user and version set, under ``$XDG_CACHE_HOME/nlpress/aarch64``:
Debian's arm64 packages of Python 3.11 and the few libraries it needs, fetched with
``apt-get download`` from the host's apt sources (private apt state, nothing installed machine-wide)
and unpacked with ``dpkg -x``, plus ``ROOT/site`` with the aarch64 wheels of the TVM runtime's
Python stack at the host's versions. Scripts then run as
``qemu-aarch64 -L ROOT ROOT/usr/bin/python3.11`` with ``PYTHONPATH=ROOT/site``.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from nlpress.ir import NlpressError

logger = logging.getLogger(__name__)

SETUP_HINT = "run .ci/setup-arm.sh"

# Debian arm64 packages unpacked into the root: Python 3.11 and the shared libraries that it,
# numpy and the TVM runtime load. The stdlib's other dependencies (sqlite, ncurses, readline,
# tzdata, ...) are left out: nothing on the runtime side imports them.
DEBS = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3.11",
    "libc6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libssl3",
    "libstdc++6",
    "libgcc-s1",
    "libbz2-1.0",
    "liblzma5",
    "libuuid1",
    "libcrypt1",
)

# Wheels installed into ROOT/site, each at the version installed on the host.
WHEELS = ("numpy", "ml_dtypes", "apache-tvm", "apache-tvm-ffi", "typing_extensions")
WHEEL_PLATFORM = "manylinux_2_28_aarch64"  # also accepts older manylinux tags


class EmulationError(NlpressError):
    """Emulation cannot work here, or the emulated program failed; the message says which."""


def cache_dir() -> Path:
    """The folder that holds the aarch64 roots: ``$XDG_CACHE_HOME/nlpress/aarch64``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nlpress" / "aarch64"


def _missing_tool() -> str | None:
    for tool, why in (
        ("qemu-aarch64", SETUP_HINT),
        ("apt-get", "the aarch64 root is built from Debian's arm64 packages"),
        ("dpkg", "the aarch64 root is built from Debian's arm64 packages"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} not found: {why}"
    return None


def _pins() -> list[str]:
    pins = []
    for name in WHEELS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            raise EmulationError(
                f"{name} is not installed on the host: the aarch64 root mirrors its version"
            ) from None
    return pins


def available() -> str | None:
    """Whether emulation can work here.

    Building the root the first time also needs the host's apt sources and PyPI to be reachable;
    that is not checked here.

    Returns:
        None if it can, else the reason (one line, fit for a pytest skip).
    """
    try:
        _pins()
    except EmulationError as e:
        return str(e)
    return _missing_tool()


def _run(cmd: Sequence[str | Path], what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise EmulationError(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))


def _build(root: Path, pins: Sequence[str]) -> None:
    """Fills the empty folder ``root`` with the sysroot and ``root/site``."""
    apt = root / ".apt"
    debs = apt / "debs"
    for sub in ("lists/partial", "cache/archives/partial", "debs"):
        (apt / sub).mkdir(parents=True)
    (apt / "status").touch()
    # The host's sources and keys, but arm64 only and a private state: the machine's apt state,
    # its dpkg architectures and its installed packages are never touched.
    opts = [
        "-o=APT::Architecture=arm64",
        "-o=APT::Architectures::=arm64",
        f"-o=Dir::State::Lists={apt / 'lists'}",
        f"-o=Dir::State::Status={apt / 'status'}",
        f"-o=Dir::Cache={apt / 'cache'}",
        "-o=APT::Sandbox::User=root",
        "-o=Debug::NoLocking=1",
    ]
    _run(["apt-get", *opts, "-qq", "update"], "apt-get update (arm64 package lists)")
    _run(["apt-get", *opts, "-qq", "download", *DEBS], "apt-get download of arm64 packages", debs)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg", "-x", deb, root], f"dpkg -x {deb.name}")
    shutil.rmtree(apt)
    if not (root / "usr/bin/python3.11").is_file():
        raise EmulationError("the arm64 packages held no usr/bin/python3.11 (is this Debian 12?)")
    # Bytecode made on the host (same magic number) saves seconds on each emulated start.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-qq", "-j0", root / "usr/lib/python3.11"],
        check=False,
    )
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(
        [
            *pip,
            *("--target", root / "site", "--platform", WHEEL_PLATFORM),
            *("--python-version", "3.11", "--implementation", "cp"),
            *("--only-binary=:all:", "--no-deps", *pins),
        ],
        f"pip install of the {WHEEL_PLATFORM} wheels",
    )


def aarch64_root() -> Path:
    """The aarch64 root, built on first use (a few hundred MB; about a minute).

    Built in a temporary folder and renamed into place, under a file lock, so concurrent callers
    wait for one build. A new set of host versions gets a new root.

    Returns:
        ROOT: an arm64 Debian sysroot holding ``usr/bin/python3.11``, with the wheels in
        ``ROOT/site``.

    Raises:
        EmulationError: a tool or package is missing, or a download failed.
    """
    if (reason := _missing_tool()) is not None:
        raise EmulationError(reason)
    pins = _pins()
    key = hashlib.sha256(repr((DEBS, pins, WHEEL_PLATFORM)).encode()).hexdigest()[:12]
    base = cache_dir()
    root = base / f"py3.11-{key}"
    if root.is_dir():
        return root
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if root.is_dir():
            return root
        for stale in base.glob(f".{root.name}-*"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        logger.info("building the aarch64 root %s (%s)", root, ", ".join(pins))
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=base))
        try:
            _build(tmp, pins)
            tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("built the aarch64 root in %.1f s", time.perf_counter() - start)
    return root


def python_command(
    script: str | os.PathLike[str],
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    pythonpath: Sequence[str | os.PathLike[str]] = (),
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run Python on the emulated aarch64 root.

    Arguments as for `run_python`; for a caller that starts the process itself (a server).

    Raises:
        EmulationError: The root cannot be built.
    """
    root = aarch64_root()
    source = ["-c", script] if isinstance(script, str) else [os.fspath(script)]
    cmd = ["qemu-aarch64", "-L", str(root), str(root / "usr/bin/python3.11"), "-s", *source]
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LD_"))}
    paths = [*(os.fspath(p) for p in pythonpath), str(root / "site")]
    run_env["PYTHONPATH"] = os.pathsep.join(paths)
    run_env["PYTHONDONTWRITEBYTECODE"] = "1"  # the cached root stays as built
    run_env.update(env or {})
    return [*cmd, *args], run_env


def run_python(
    script: str | os.PathLike[str],
    args: Sequence[str] = (),
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 600,
    pythonpath: Sequence[str | os.PathLike[str]] = (),
) -> subprocess.CompletedProcess[str]:
    """Runs Python on the emulated aarch64 root.

    Args:
        script: Python source code (a ``str``), or the path of a script file (a ``PathLike``).
        args: The script's ``sys.argv[1:]``.
        cwd: Working directory (host paths are seen as they are).
        env: Variables set on top of the host environment (e.g. ``TVM_USE_RUNTIME_LIB=1``,
            ``QEMU_CPU=cortex-a53``).
        timeout: Seconds before the run is stopped.
        pythonpath: Folders searched before ``ROOT/site``.

    Returns:
        The completed process, with stdout and stderr as text.

    Raises:
        EmulationError: The root cannot be built, or the script failed or timed out (the message
            holds the tail of its stderr).
    """
    cmd, run_env = python_command(script, args, env, pythonpath)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=run_env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise EmulationError(f"aarch64 python timed out after {timeout} s") from e
    logger.info("aarch64 python ran in %.1f s", time.perf_counter() - start)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise EmulationError(f"aarch64 python exited with {proc.returncode}:\n{tail}")
    return proc
