"""Building and loading the fused CPU kernels (``csrc/*.cpp``: one library), once per machine.

A build lives in ``$TORCH_EXTENSIONS_DIR/<name>`` (default ``~/.cache/torch_extensions``), its
name a hash of the source, the flags, torch, Python and (native builds) the CPU, and counts only
once its marker file ``built`` is written. Processes that start together build it once:

* **Our own lock.** A build holds ``fcntl.flock`` on ``<root>/<name>.lock``. The operating
  system releases it when the holder exits, however it exits — a build killed by ``SIGKILL``,
  the OOM killer or a cancelled job leaves no stale lock. A process that waits longer than
  ``SMOOTHTOPK_BUILD_TIMEOUT`` seconds (default 600) gives up with one warning and computes on
  the PyTorch path.
* **torch's lock.** ``torch.utils.cpp_extension.load`` takes a lock file of its own, ``lock`` in
  the build directory, that a killed build leaves behind and every later build then waits on
  forever (torch issue 189245). Only the holder of our lock builds in that directory, so a
  ``lock`` file found there is stale, and is removed before the build.
* **Quiet.** No build is tried without a C++ compiler (``$CXX``, else ``c++``): the warning
  names what to install. A failed build is reported in one line (the full log stays in the build
  directory), and importing ``torch.utils.cpp_extension`` does not print torch's "No CUDA
  runtime is found" on machines without CUDA.

Example:
    >>> from smoothtopk.backends import _cpu_build
    >>> _cpu_build.build_name(portable=True).startswith("smoothtopk_cpu_portable_")
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "smooth_topk_cpu.cpp"
#: the compiled C++ files of the library: the class-index kernel, its autograd formula (one
#: differentiable operator), every class's loss at once, and the probe of vector_math.h's
#: functions for the tests
SOURCES = (
    SOURCE, SOURCE.with_name("autograd_cpu.cpp"), SOURCE.with_name("every_class_cpu.cpp"),
    SOURCE.with_name("vector_math_cpu.cpp"),
)  # fmt: skip
#: every file of the build, headers included: a change to any of them is a new build
BUILD_FILES = (*SOURCES, SOURCE.with_name("vector_math.h"))
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fno-trapping-math", "-fopenmp"]
#: without -march=native and OpenMP's runtime; -fopenmp-simd keeps the `#pragma omp simd` loops
#: (the 8-row tails of smooth_topk_cpu.cpp) vectorised
PORTABLE_FLAGS = ["-O3", "-ffp-contract=fast", "-fno-trapping-math", "-fopenmp-simd"]
BUILT = "built"  # marker file in a build directory: its library is complete and loadable
TORCH_LOCK = "lock"  # torch.utils.cpp_extension's lock file in a build directory
TIMEOUT_ENV = "SMOOTHTOPK_BUILD_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
AHEAD_OF_TIME = 'python -c "import smoothtopk; smoothtopk.backends.cpu.load()"'


class BuildError(RuntimeError):
    """The kernel cannot be built or loaded here; the message is one line."""


def load_or_build() -> None:
    """Load the library built before, else build it (under the lock) and load it."""
    root = build_root()
    names = [build_name(portable=False), build_name(portable=True)]
    if _load_built(root, names):
        return
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise BuildError(
            f"no C++ compiler ({compiler!r} is not on PATH): install one (e.g. g++ or clang; "
            "`apt install g++`, `xcode-select --install`) or set CXX"
        )
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root / f"{names[0]}.lock"):
        if _load_built(root, names):  # built by another process while this one waited
            return
        _announce(root)
        try:
            # -fopenmp: at::parallel_for is serial without it; the extension then shares
            # torch's libgomp, so torch.set_num_threads applies.
            _compile(names[0], root, FLAGS, ["-fopenmp"])
        except Exception as first:
            try:
                _compile(names[1], root, PORTABLE_FLAGS, [])
            except Exception:
                raise BuildError(f"{one_line(first)} (build files in {root / names[0]})") from None


def _load_built(root: Path, names: list[str]) -> bool:
    for name in names:
        if (root / name / BUILT).is_file():
            torch.ops.load_library(str(root / name / f"{name}.so"))
            return True
    return False


def build_root() -> Path:
    """``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions`` (as torch)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "torch_extensions"


def build_name(portable: bool) -> str:
    """A name per source, flags, torch, Python and (native builds: ``-march=native``) CPU, so
    that an existing library is the one this process would build."""
    flags = PORTABLE_FLAGS if portable else FLAGS
    parts = [*(path.read_bytes() for path in BUILD_FILES), " ".join(flags).encode()]
    parts.append(torch.__version__.encode())
    parts += [sys.version.encode(), platform.machine().encode()]
    if not portable:
        parts.append(_cpu_flags().encode())
    digest = hashlib.sha1(b"\0".join(parts)).hexdigest()[:12]
    return f"smoothtopk_cpu_{'portable_' if portable else ''}{digest}"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def timeout() -> float:
    """Seconds to wait for another process's build: ``$SMOOTHTOPK_BUILD_TIMEOUT`` or 600."""
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(value) if value.strip() else DEFAULT_TIMEOUT
    except ValueError:
        raise BuildError(f"{TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None
    if not seconds >= 0:
        raise BuildError(f"{TIMEOUT_ENV} must be >= 0 seconds, got {value!r}")
    return seconds


@contextlib.contextmanager
def _build_lock(path: Path):
    """Hold an exclusive ``flock`` on ``path`` (released by the OS if this process dies), waiting
    at most :func:`timeout` seconds for another holder."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): torch's own lock file is the only one
        yield
        return
    deadline = time.monotonic() + timeout()
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BuildError(
                        f"another process has been building it for over {timeout():g} s "
                        f"(lock {path}; {TIMEOUT_ENV} sets the wait)"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _announce(root: Path) -> None:
    print(
        f"smoothtopk: compiling the fused CPU kernels (csrc/*.cpp, about 45 s); this happens "
        f"once per machine (cached in {root}, set TORCH_EXTENSIONS_DIR to move it); "
        f"to build ahead of time: {AHEAD_OF_TIME}",
        file=sys.stderr,
        flush=True,
    )


def _compile(name: str, root: Path, flags: list[str], ldflags: list[str]) -> None:
    """``torch.utils.cpp_extension.load`` into ``root/name`` (which also loads the library),
    under our lock: a ``lock`` file of torch's found there is a killed build's, and goes."""
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / TORCH_LOCK).unlink(missing_ok=True)
    load = _cpp_extension_load()
    path = os.environ.get("PATH", "")
    ninja = _ninja_directory()
    if ninja:
        os.environ["PATH"] = ninja + os.pathsep + path
    try:
        load(
            name=name,
            sources=[str(source) for source in SOURCES],
            extra_cflags=flags,
            extra_ldflags=ldflags,
            build_directory=str(directory),
            is_python_module=False,
            verbose=False,
        )
    finally:
        os.environ["PATH"] = path
    (directory / BUILT).write_text(name + "\n")  # the library is complete


def _cpp_extension_load():
    """``torch.utils.cpp_extension.load``, imported without torch's import-time "No CUDA runtime
    is found" warning (it concerns CUDA extensions; this one is CPU only)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load
    finally:
        logger.setLevel(level)
    return load


def _ninja_directory() -> str | None:
    """torch runs ``ninja`` from PATH; the ``ninja`` package (a dependency) is not on PATH when
    its environment is used without being activated."""
    try:
        import ninja
    except ImportError:
        return None
    return getattr(ninja, "BIN_DIR", None)


def one_line(error: Exception) -> str:
    """The first line of an error, at most 240 characters (torch's build errors carry every
    command line).

    Example:
        >>> one_line(RuntimeError("Error building extension\\n[1/2] c++ -O3 ..."))
        'Error building extension'
    """
    if isinstance(error, BuildError):
        return str(error)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    return first if len(first) <= 240 else first[:237] + "..."
