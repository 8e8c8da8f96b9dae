"""Acceptance: the bundled SmolLM2-135M GGUF, token-identical to transformers' load of the same file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shoal.engine import LLM, SamplingParams

pytestmark = pytest.mark.slow

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "Name three colors."}],
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "user", "content": "Explain what a GPU is in one sentence."}],
]


@pytest.fixture(scope="module")
def llm() -> LLM:
    # The fp32 path is the parity reference (weights=native is compared with it in test_quant_model).
    return LLM("bundled:smollm2-135m-instruct", kv_cache_memory_gb=0.25, weights="dequantized")


def test_capital_of_france(llm: LLM) -> None:
    answer = llm.generate(CHATS[0], SamplingParams(temperature=0, max_tokens=32))[0].text
    assert "Paris" in answer


def test_first_32_greedy_tokens_match_transformers(llm: LLM, bundled_model_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    results = llm.generate(CHATS, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))
    model = AutoModelForCausalLM.from_pretrained(
        str(bundled_model_path.parent), gguf_file=bundled_model_path.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        for result in results:
            ids = torch.tensor([list(result.prompt_token_ids)])
            out = model.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
            assert list(result.token_ids) == out[0, ids.shape[1] :].tolist()
