"""Session fixtures for engine tests: tiny random checkpoints and the bundled GGUF path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# On a shared, oversubscribed CPU, OpenMP's spin-waiting threads make small torch ops ~10x slower
# in wall time; passive waiting avoids it. Only effective if torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _build(tmp_path_factory: pytest.TempPathFactory, arch: str) -> Path:
    from support.tiny_models import build_tiny_checkpoint

    return build_tiny_checkpoint(arch, tmp_path_factory.mktemp(f"tiny-{arch}") / arch)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama with llama3 rope scaling and an untied lm_head."""
    return _build(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_llama_tied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama with tied embeddings (SmolLM2-shaped)."""
    return _build(tmp_path_factory, "llama_tied")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2 with qkv bias."""
    return _build(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3 with q/k norm and head_dim != hidden / heads."""
    return _build(tmp_path_factory, "qwen3")


@pytest.fixture(scope="session")
def bundled_model_path() -> Path:
    """The bundled SmolLM2-135M GGUF (`make setup` installs it; a missing package fails loudly)."""
    from shoal.engine.bundled import bundled_model_path as locate

    return locate()
