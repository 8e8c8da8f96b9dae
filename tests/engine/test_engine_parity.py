"""Acceptance: greedy engine output is token-identical to transformers on tiny random checkpoints.

Batched, with chunked prefill, under KV pressure (preemption) and with shared prefixes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shoal.engine import LLM, SamplingParams

MAX_TOKENS = 10
ARCH_FIXTURES = ["tiny_llama_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"]

_WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
    "jumbo boxes of pizza near the old harbour and singing sailors count stars"
).split()


def make_prompts(n: int = 8) -> list[str]:
    lengths = [2, 37, 5, 61, 13, 24, 3, 48, 9, 30][:n]
    return [" ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(k)) for i, k in enumerate(lengths)]


def hf_greedy(model_dir: Path, prompt_ids: list[list[int]]) -> list[list[int]]:
    from support.tiny_models import load_hf_reference

    model = load_hf_reference(model_dir)
    outs = []
    with torch.no_grad():
        for ids in prompt_ids:
            gen = model.generate(
                torch.tensor([ids]),
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
            outs.append(gen[0, len(ids) :].tolist())
    return outs


_references: dict[str, tuple[list[list[int]], list[list[int]]]] = {}


def references(model_dir: Path, prompts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    key = f"{model_dir}|{'|'.join(prompts)}"
    if key not in _references:
        llm = LLM(str(model_dir), num_kv_blocks=256)
        ids = [llm.tokenizer.encode(p) for p in prompts]
        _references[key] = (ids, hf_greedy(model_dir, ids))
    return _references[key]


GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(params=ARCH_FIXTURES)
def model_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def test_batched_greedy_matches_transformers(model_dir: Path) -> None:
    prompts = make_prompts()
    ids, expected = references(model_dir, prompts)
    llm = LLM(str(model_dir), num_kv_blocks=256)
    results = llm.generate(prompt_token_ids=ids, params=GREEDY)
    assert [list(r.token_ids) for r in results] == expected


def test_chunked_prefill_matches_transformers(model_dir: Path) -> None:
    prompts = make_prompts()
    ids, expected = references(model_dir, prompts)
    llm = LLM(str(model_dir), num_kv_blocks=256, max_num_batched_tokens=7, block_size=4)
    results = llm.generate(prompt_token_ids=ids, params=GREEDY)
    assert [list(r.token_ids) for r in results] == expected


def test_preemption_matches_transformers(model_dir: Path) -> None:
    prompts = make_prompts()
    ids, expected = references(model_dir, prompts)
    llm = LLM(str(model_dir), num_kv_blocks=14, block_size=8, max_num_batched_tokens=64)
    results = llm.generate(prompt_token_ids=ids, params=GREEDY)
    assert llm.engine.scheduler.num_preemptions > 0, "the KV pool should have been too small"
    assert [list(r.token_ids) for r in results] == expected
    assert llm.engine.block_manager.num_free_blocks == 14


def test_shared_prefix_hits_cache_and_keeps_outputs(model_dir: Path) -> None:
    system = " ".join(_WORDS[:40])
    prompts = [f"{system} question {i}: {' '.join(_WORDS[i : i + 3 + i])}" for i in range(8)]
    ids, expected = references(model_dir, prompts)
    llm = LLM(str(model_dir), num_kv_blocks=256, block_size=8)
    first = llm.generate(prompt_token_ids=ids[:1], params=GREEDY)
    rest = llm.generate(prompt_token_ids=ids[1:], params=GREEDY)
    results = first + rest
    assert [list(r.token_ids) for r in results] == expected
    assert all(r.usage.cached_tokens > 0 for r in rest)
    assert llm.engine.stats().prefix_cache_hits > 0
