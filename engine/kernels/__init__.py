"""Kernel backends behind a registry: ``torch`` (CPU path and test oracle) and ``triton`` (GPU path)."""

from shoal.engine.kernels.backend import KernelBackend
from shoal.engine.kernels.registry import available_backends, get_backend, register_backend

__all__ = ["KernelBackend", "available_backends", "get_backend", "register_backend"]
