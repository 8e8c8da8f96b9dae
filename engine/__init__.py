"""Shoal's inference engine.

Lazy on purpose (PEP 562): ``import shoal.engine.block_hash`` must not import torch,
because the router imports the engine's torch-free modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.engine.config import EngineConfig
    from shoal.engine.llm import LLM
    from shoal.engine.sampling_params import SamplingParams, StructuredOutput

__all__ = ["LLM", "EngineConfig", "SamplingParams", "StructuredOutput"]

_EXPORTS = {
    "LLM": "shoal.engine.llm",
    "EngineConfig": "shoal.engine.config",
    "SamplingParams": "shoal.engine.sampling_params",
    "StructuredOutput": "shoal.engine.sampling_params",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'shoal.engine' has no attribute {name!r}")
