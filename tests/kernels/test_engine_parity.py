"""The engine's greedy output on the Triton path (interpreted) equals the torch path.

Tiny random checkpoints (tests/support/tiny_models.py); a few prompts batched together so a
step mixes prefill chunks and decodes, with a small block size and a small token budget so
prompts are chunked across steps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.kernels

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Hi"]


def _generate(model_dir: Path, kernels: str) -> list[tuple[int, ...]]:
    from shoal.engine import LLM, SamplingParams

    llm = LLM(
        str(model_dir), kernels=kernels, device="cpu", dtype="float32", block_size=4,
        num_kv_blocks=64, max_num_batched_tokens=8, max_num_seqs=4, enable_prefix_caching=False,
    )  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    return [r.token_ids for r in llm.generate(PROMPTS, params)]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_triton_greedy_equals_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    from shoal.engine.kernels.triton import TritonBackend
    from support.tiny_models import build_tiny_checkpoint

    calls: list[int] = []
    real = TritonBackend.paged_attention

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(TritonBackend, "paged_attention", staticmethod(counting))
    model_dir = build_tiny_checkpoint(arch, tmp_path / arch)
    expected = _generate(model_dir, "torch")
    assert not calls
    got = _generate(model_dir, "triton")
    assert calls, "the triton path was not used"
    assert all(len(t) == 4 for t in expected)
    assert got == expected
