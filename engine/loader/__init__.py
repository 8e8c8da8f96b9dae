"""Model loading: HF folders, GGUF files and the bundled SmolLM2.

Lazy (PEP 562) so that ``shoal.engine.loader.errors`` stays importable without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.engine.loader.errors import ModelLoadError
    from shoal.engine.loader.hf import LoadedModel, load_model

__all__ = ["LoadedModel", "ModelLoadError", "load_model"]

_EXPORTS = {
    "LoadedModel": "shoal.engine.loader.hf",
    "load_model": "shoal.engine.loader.hf",
    "ModelLoadError": "shoal.engine.loader.errors",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'shoal.engine.loader' has no attribute {name!r}")
