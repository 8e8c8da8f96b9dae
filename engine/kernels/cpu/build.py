"""Build (once) and load the C++ quantized-GEMV extension.

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
    """The quantized CPU kernels cannot run here (no AVX2/FMA, or no C++ toolchain to build them)."""


def cpu_supports_kernels() -> bool:
    """True when the CPU has AVX2 + FMA (torch reports AVX2 or AVX512 capability)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def cache_dir() -> Path:
    root = os.environ.get("SHOAL_KERNEL_CACHE") or Path.home() / ".cache" / "shoal" / "kernels"
    digest = hashlib.sha256(_SOURCE.read_bytes() + " ".join(_CFLAGS).encode() + torch.__version__.encode())
    return Path(root) / f"{_NAME}-{digest.hexdigest()[:16]}"


@functools.cache
def quant_kernels() -> ModuleType:
    """The extension module (``q4_1_linear``, ``q8_0_linear``, ``*_dequantize``), built on first use."""
    if not cpu_supports_kernels():
        raise KernelUnavailable(
            f"quantized CPU kernels need AVX2 + FMA; this CPU reports {torch.backends.cpu.get_cpu_capability()}"
        )
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    # one builder at a time, the others wait then import (torch itself uses "lock" inside the folder)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = folder / f"{_NAME}.so"
        if not built.exists():
            _build(folder)
    return _import(built)


def _build(folder: Path) -> None:
    from torch.utils.cpp_extension import load

    logger.warning("building the quantized CPU kernels into %s (once, ~40 s)", folder)
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
            name=_NAME,
            sources=[str(_SOURCE)],
            extra_cflags=list(_CFLAGS),
            extra_ldflags=["-fopenmp"],
            build_directory=str(folder),
            verbose=False,
        )
    except Exception as exc:  # compiler missing or failing: say so, the caller picks fp32
        raise KernelUnavailable(f"cannot build the quantized CPU kernels: {exc}") from exc
    if not (folder / f"{_NAME}.so").exists():
        raise KernelUnavailable(f"the kernel build left no {_NAME}.so in {folder}")


def _import(path: Path) -> ModuleType:
    loaded = sys.modules.get(_NAME)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(_NAME, path)
    if spec is None or spec.loader is None:
        raise KernelUnavailable(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:  # e.g. a cached build from another torch ABI: say so, fp32 still works
        raise KernelUnavailable(f"cannot import the cached kernels {path}: {exc}") from exc
    sys.modules[_NAME] = module
    return module
