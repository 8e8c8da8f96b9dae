"""Backend registry: pick ``triton`` on CUDA, ``torch`` elsewhere; ``SHOAL_KERNELS`` forces one."""

from __future__ import annotations

import os
from collections.abc import Callable

from shoal.engine.kernels.backend import KernelBackend

_FACTORIES: dict[str, Callable[[], KernelBackend]] = {}
_INSTANCES: dict[str, KernelBackend] = {}
ENV_VAR = "SHOAL_KERNELS"


def register_backend(name: str, factory: Callable[[], KernelBackend]) -> None:
    """Make a backend available under ``name`` (the factory is called lazily, once)."""
    _FACTORIES[name] = factory


def available_backends() -> list[str]:
    _register_builtins()
    return sorted(_FACTORIES)


def default_backend_name(device: str) -> str:
    forced = os.environ.get(ENV_VAR)
    if forced:
        return forced
    return "triton" if device.startswith("cuda") else "torch"


def get_backend(name: str | None = None, device: str = "cpu") -> KernelBackend:
    """The backend called ``name`` (or the default for ``device``)."""
    _register_builtins()
    name = name or default_backend_name(device)
    if name not in _FACTORIES:
        raise ValueError(f"unknown kernel backend {name!r}; available: {', '.join(sorted(_FACTORIES))}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]


def _torch_factory() -> KernelBackend:
    from shoal.engine.kernels.torch_backend import TorchBackend

    return TorchBackend()


def _triton_factory() -> KernelBackend:
    try:
        from shoal.engine.kernels.triton import TritonBackend
    except ImportError as exc:  # triton missing, or the backend not built on this install
        raise ValueError(f"the triton kernel backend is unavailable: {exc}") from exc
    return TritonBackend()


def _register_builtins() -> None:
    _FACTORIES.setdefault("torch", _torch_factory)
    _FACTORIES.setdefault("triton", _triton_factory)
