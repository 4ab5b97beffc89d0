"""Build and load the fused mixed-node extension: JIT with torch.utils.cpp_extension + ninja, cached."""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

SOURCE_PACKAGE = "nasdeploy.kernels.csrc"
CPU_SOURCES = ("mixed_node_ops.cpp", "mixed_node_cpu.cpp", "mixed_node_emulate.cpp")
CUDA_SOURCES = ("mixed_node_cuda.cu",)
HEADERS = ("mixed_node.h", "mixed_node_launch.h")
OP_NAMESPACE = "nasdeploy"
DEFAULT_CUDA_ARCHS = ("9.0",)
SANITIZE_ENV = "NASDEPLOY_KERNELS_SANITIZE"  # "address": load_extension builds the AddressSanitizer variant
# Instrumented CPU builds for tests (run under LD_PRELOAD of the sanitizer runtime); own name and cache dir.
SANITIZERS = {
    "address": dict(suffix="_asan", cflags=["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address"],
                    ldflags=["-fsanitize=address"]),
}


@dataclass(frozen=True)
class BuildInfo:
    """What was built and loaded: variant, CUDA target architectures, library path, build time."""

    name: str
    cuda: bool
    archs: tuple[str, ...]
    library: str
    build_dir: str
    seconds: float
    torch_version: str

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)

    def summary(self) -> str:
        """One line for people."""
        target = f"CPU + CUDA (sm {', '.join(self.archs)})" if self.cuda else "CPU only"
        return f"{self.name}: {target}, {self.seconds:.1f} s, {self.library}"


def source_dir() -> Path:
    """The directory holding the C++/CUDA sources shipped inside the package."""
    return Path(str(importlib.resources.files(SOURCE_PACKAGE)))


def source_files(cuda: bool) -> list[Path]:
    """The translation units of the CPU or CPU + CUDA variant."""
    names = CPU_SOURCES + (CUDA_SOURCES if cuda else ())
    return [source_dir() / n for n in names]


def extensions_root() -> Path:
    """Cache root: $TORCH_EXTENSIONS_DIR, else ~/.cache/nasdeploy/extensions (per Python and torch version)."""
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "nasdeploy" / "extensions")
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__.replace('+', '_')}"
    return Path(base) / tag


def _cpp_extension():  # type: ignore[no-untyped-def]
    """torch.utils.cpp_extension, imported without its "No CUDA runtime is found" warning on CPU-only machines.

    (BuildInfo and `nasdeploy build-ext` report what was built; the warning only broke one-line CLI errors.)
    """
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    return cpp_extension


def cuda_home() -> Path | None:
    """A CUDA toolkit root with nvcc and headers: $CUDA_HOME, torch's guess, or /usr/local/cuda."""
    cpp_extension = _cpp_extension()
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME, "/usr/local/cuda"]
    for cand in candidates:
        if cand and Path(cand, "bin", "nvcc").exists() and Path(cand, "include", "cuda_runtime.h").exists():
            return Path(cand)
    return None


def cuda_toolkit_available() -> bool:
    """True when torch was built with CUDA and a CUDA toolkit (nvcc + headers) is found."""
    return torch.version.cuda is not None and cuda_home() is not None


def compiler_available() -> bool:
    """True when a C++ compiler and ninja are on PATH."""
    return shutil.which(os.environ.get("CXX", "c++")) is not None and shutil.which("ninja") is not None


def default_archs() -> tuple[str, ...]:
    """CUDA archs to build for: $TORCH_CUDA_ARCH_LIST, else the visible GPUs, else sm_90."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return tuple(a for a in env.replace(",", ";").replace(" ", ";").split(";") if a)
    if torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return tuple(f"{major}.{minor}" for major, minor in sorted(caps))
    return DEFAULT_CUDA_ARCHS


_CUDA_ARCH = re.compile(r"^(?P<major>[1-9][0-9]?)\.(?P<minor>[0-9])(?P<suffix>[af]?)(?P<ptx>\+PTX)?$")


def validate_cuda_arch(arch: str) -> str:
    """A CUDA compute capability as TORCH_CUDA_ARCH_LIST writes it (8.0, 8.6+PTX, 9.0a, 10.0); ConfigError otherwise."""
    from nasdeploy.errors import ConfigError

    match = _CUDA_ARCH.match(arch.strip())
    if match is None:
        raise ConfigError(f"CUDA arch {arch!r} is not a compute capability like 8.0, 8.6+PTX, 9.0a or 10.0")
    major, suffix = int(match["major"]), match["suffix"]
    if major < 5:
        raise ConfigError(f"CUDA arch {arch!r} is older than any CUDA toolkit torch builds with supports (5.0+)")
    if suffix and major < 9:
        raise ConfigError(f"CUDA arch {arch!r}: the '{suffix}' (arch-specific) variants exist from 9.0 on")
    return arch.strip()


@contextlib.contextmanager
def _arch_list(archs: tuple[str, ...]) -> Iterator[None]:
    # cpp_extension reads the target list from the environment; without it, it builds every arch.
    old = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = old


def build_extension(cuda: bool, archs: tuple[str, ...] = (), verbose: bool = False,
                    sanitize: str | None = None) -> BuildInfo:
    """Compile (or reuse the cached build of) one variant and load it into this process.

    Raises RuntimeError with a one-line reason when no compiler, ninja or CUDA toolkit is available.
    Only one variant can be loaded per process (both register the same operators). `sanitize`
    ("address", CPU only) builds an instrumented variant under its own name; the process must have
    the sanitizer runtime loaded first (LD_PRELOAD), see tests/kernels/test_asan.py.
    """
    cpp_extension = _cpp_extension()
    if sanitize is not None and sanitize not in SANITIZERS:
        raise ValueError(f"unknown sanitizer {sanitize!r}, expected one of {sorted(SANITIZERS)}")
    if sanitize is not None and cuda:
        raise RuntimeError("sanitized builds are CPU only (the CUDA emulation path covers the CUDA bodies)")
    if not compiler_available():
        raise RuntimeError("no C++ compiler or ninja on PATH, cannot build the fused mixed-op extension")
    if cuda and not cuda_toolkit_available():
        raise RuntimeError("CUDA toolkit (nvcc) not found or torch built without CUDA, cannot build CUDA kernels")
    archs = tuple(archs) or (default_archs() if cuda else ())
    name = "nasdeploy_mixed_node_" + ("cuda_" + "_".join(a.replace(".", "") for a in archs) if cuda else "cpu")
    cflags = ["-O3", "-fopenmp"] + (["-DNASDEPLOY_WITH_CUDA"] if cuda else [])
    ldflags = ["-fopenmp"]
    if sanitize is not None:
        variant = SANITIZERS[sanitize]
        name += variant["suffix"]
        cflags += variant["cflags"]  # later flags win (the -O level)
        ldflags += variant["ldflags"]
    build_dir = extensions_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    if cuda:
        # torch guesses the toolkit root from nvcc on PATH, which may be a wrapper outside it
        # (e.g. /usr/local/bin/nvcc); point it at the root that has the headers.
        cpp_extension.CUDA_HOME = str(cuda_home())
    announced = announce_first_build(name, build_dir)
    start = time.perf_counter()
    with _arch_list(archs) if cuda else contextlib.nullcontext():
        library = cpp_extension.load(
            name=name,
            sources=[str(p) for p in source_files(cuda)],
            extra_cflags=cflags,
            extra_cuda_cflags=["-O3"],
            extra_ldflags=ldflags,
            extra_include_paths=[str(source_dir())],
            build_directory=str(build_dir),
            with_cuda=cuda,
            is_python_module=False,
            verbose=verbose,
        )
    seconds = time.perf_counter() - start
    if announced:
        print(f"[kernels] compiled in {seconds:.0f} s", file=sys.stderr, flush=True)
    return BuildInfo(name=name, cuda=cuda, archs=archs, library=str(library), build_dir=str(build_dir),
                     seconds=seconds, torch_version=torch.__version__)


# Measured on this project's 2-core CI machines (CPU variant, cold cache): 60-90 s.
FIRST_BUILD_SECONDS = "1-2 min on 2 CPU cores"


def announce_first_build(name: str, build_dir: Path) -> bool:
    """On a terminal, say that a first-use compile starts and how long it takes (else the wait is silent).

    Only on a terminal: piped or captured stderr (scripts, tests, CI logs) keeps its one `error:` line
    contract; `nasdeploy build-ext` compiles ahead of time and reports what it built.
    """
    if (build_dir / f"{name}.so").exists() or not sys.stderr.isatty():
        return False
    print(f"[kernels] compiling the fused mixed-op kernels on first use (about {FIRST_BUILD_SECONDS}; cached in "
          f"{build_dir}; `nasdeploy build-ext` does this ahead of time)", file=sys.stderr, flush=True)
    return True


@functools.lru_cache(maxsize=1)
def load_extension() -> BuildInfo:
    """Load the extension once per process: with CUDA kernels when a GPU is visible, else CPU only.

    With $NASDEPLOY_KERNELS_SANITIZE=address: the AddressSanitizer CPU variant instead (for tests).
    """
    sanitize = os.environ.get(SANITIZE_ENV) or None
    if sanitize is not None:
        return build_extension(cuda=False, sanitize=sanitize)
    return build_extension(cuda=torch.cuda.is_available() and cuda_toolkit_available())


def loaded_devices() -> tuple[str, ...]:
    """Device types the loaded operators have kernels for (empty when nothing is loaded)."""
    name = f"{OP_NAMESPACE}::mixed_node_fwd"
    if not torch._C._dispatch_has_kernel(name):
        return ()
    return tuple(k.lower() for k in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key(name, k))
