"""Build (once) and load the C++ CPU kernel extensions (quantized GEMV, paged attention).

The build takes ~40 s with the system compiler, so it is cached on disk, keyed by a hash of the
source, the compiler flags and the torch version: the first process that needs it builds it
(logging a line), later ones import the cached ``.so`` in milliseconds. ``SHOAL_KERNEL_CACHE``
overrides the cache folder (default ``~/.cache/shoal/kernels``).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("quant_gemv.cpp")
_NAME = "shoal_quant_gemv"
_CFLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp")


class KernelUnavailable(RuntimeError):
    """A CPU kernel extension cannot run here (no AVX2/FMA, or no C++ toolchain to build it)."""


def cpu_supports_kernels() -> bool:
    """True when the CPU has AVX2 + FMA (torch reports AVX2 or AVX512 capability)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def cache_dir(name: str = _NAME, source: Path = _SOURCE) -> Path:
    root = os.environ.get("SHOAL_KERNEL_CACHE") or Path.home() / ".cache" / "shoal" / "kernels"
    digest = hashlib.sha256(source.read_bytes() + " ".join(_CFLAGS).encode() + torch.__version__.encode())
    return Path(root) / f"{name}-{digest.hexdigest()[:16]}"


def quant_kernels() -> ModuleType:
    """The extension module (``q4_1_linear``, ``q8_0_linear``, ``*_dequantize``), built on first use."""
    return load_extension(_NAME, _SOURCE, "quantized CPU kernels")


@functools.cache
def load_extension(name: str, source: Path, what: str) -> ModuleType:
    """The extension ``name`` built from ``source`` (cached on disk); ``what`` names it in messages."""
    if not cpu_supports_kernels():
        raise KernelUnavailable(f"{what} need AVX2 + FMA; this CPU reports {torch.backends.cpu.get_cpu_capability()}")
    folder = cache_dir(name, source)
    folder.mkdir(parents=True, exist_ok=True)
    # one builder at a time, the others wait then import (torch itself uses "lock" inside the folder)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = folder / f"{name}.so"
        if not built.exists():
            _build(folder, name, source, what)
    return _import(built, name)


def _build(folder: Path, name: str, source: Path, what: str) -> None:
    from torch.utils.cpp_extension import load

    logger.warning("building the %s into %s (once, ~40 s)", what, folder)
    # torch finds ninja on PATH; an interpreter run as venv/bin/python (not activated) has its
    # own bin folder, where the `ninja` wheel's binary is, off PATH.
    bin_dirs = [str(Path(sys.executable).parent)]
    try:
        import ninja

        bin_dirs.append(str(ninja.BIN_DIR))
    except ImportError:
        pass
    os.environ["PATH"] = os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")])
    try:
        load(
            name=name,
            sources=[str(source)],
            extra_cflags=list(_CFLAGS),
            extra_ldflags=["-fopenmp"],
            build_directory=str(folder),
            verbose=False,
        )
    except Exception as exc:  # compiler missing or failing: say so, the caller picks fp32
        raise KernelUnavailable(f"cannot build the {what}: {exc}") from exc
    if not (folder / f"{name}.so").exists():
        raise KernelUnavailable(f"the kernel build left no {name}.so in {folder}")


def _import(path: Path, name: str) -> ModuleType:
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise KernelUnavailable(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:  # e.g. a cached build from another torch ABI: say so, fp32 still works
        raise KernelUnavailable(f"cannot import the cached kernels {path}: {exc}") from exc
    sys.modules[name] = module
    return module
