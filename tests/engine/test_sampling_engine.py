"""Acceptance: seeded sampling, top_k=1, stop strings, n>1 block sharing, logprobs vs transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shoal.engine import LLM, SamplingParams

PROMPT = "the quick brown fox jumps over the lazy dog and then"


@pytest.fixture(scope="module")
def llm(tiny_llama_dir: Path) -> LLM:
    return LLM(str(tiny_llama_dir), num_kv_blocks=256, block_size=8)


def test_same_seed_same_output_whatever_the_neighbours(llm: LLM) -> None:
    params = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=12, seed=1234, ignore_eos=True)
    alone = llm.generate(PROMPT, params)[0]
    neighbours = ["hello there", "a b c d e f g", "seven wizards hex jumbo boxes of pizza"]
    batch = llm.generate(
        [*neighbours, PROMPT],
        [SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True)] * 3 + [params],
    )[-1]
    assert batch.token_ids == alone.token_ids
    other_seed = llm.generate(PROMPT, SamplingParams(temperature=0.9, top_p=0.95, max_tokens=12, seed=99, ignore_eos=True))
    assert other_seed[0].token_ids != alone.token_ids


def test_top_k_one_equals_greedy(llm: LLM) -> None:
    greedy = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))[0]
    topk1 = llm.generate(PROMPT, SamplingParams(temperature=1.5, top_k=1, max_tokens=10, ignore_eos=True, seed=3))[0]
    assert topk1.token_ids == greedy.token_ids


def test_stop_string_never_emitted_even_across_tokens(llm: LLM) -> None:
    base = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))[0]
    tokenizer = llm.tokenizer
    pieces = [tokenizer.decode(list(base.token_ids[: i + 1])) for i in range(len(base.token_ids))]
    # a stop string straddling the boundary between tokens 3 and 4
    boundary = len(pieces[3])
    assert len(pieces[4]) > boundary
    stop = base.text[boundary - 2 : boundary + 1]
    assert stop.strip(), "need a visible stop string"
    result = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, stop=[stop]))[0]
    expected = base.text[: base.text.find(stop)]
    assert result.text == expected
    assert stop not in result.text
    assert result.finish_reason == "stop"
    assert result.outputs[0].stop_reason == stop


def test_n_samples_share_prompt_blocks(llm: LLM) -> None:
    engine = llm.engine
    prompt_ids = list(range(100, 141))  # 41 tokens = 5 full blocks of 8 + 1
    engine.add_request("fork", params=SamplingParams(n=4, temperature=1.0, max_tokens=6, seed=5), prompt_token_ids=prompt_ids)
    free_before = engine.block_manager.num_free_blocks
    engine.step()  # prefill + fork
    seqs = [s for s in engine.scheduler.running if s.request_id == "fork"]
    assert len(seqs) == 4
    shared = seqs[0].block_table[:5]
    assert all(s.block_table[:5] == shared for s in seqs)
    assert all(engine.block_manager.blocks[b].ref_count == 4 for b in shared)
    used = free_before - engine.block_manager.num_free_blocks
    # parent: 5 shared full blocks + its partial block; each child: the shared 5 + one block of its own
    assert used == 6 + 3, f"{used} blocks for 4 samples (4 unshared copies would take 24)"
    outputs = []
    while engine.has_unfinished_requests():
        outputs = engine.step() or outputs
    final = outputs[-1]
    assert final.finished and len(final.outputs) == 4
    assert all(len(o.token_ids) == 6 for o in final.outputs)
    assert len({o.token_ids for o in final.outputs}) > 1
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_logprobs_match_transformers(llm: LLM, tiny_llama_dir: Path) -> None:
    from support.tiny_models import load_hf_reference

    result = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=6, logprobs=5, ignore_eos=True))[0]
    logprobs = result.outputs[0].logprobs
    assert logprobs is not None and len(logprobs) == 6
    model = load_hf_reference(tiny_llama_dir)
    ids = list(result.prompt_token_ids) + list(result.token_ids)
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    start = len(result.prompt_token_ids) - 1
    for step, entry in enumerate(logprobs):
        row = ref[start + step]
        _, top_ids = row.topk(5)
        assert set(entry) >= set(top_ids.tolist())
        for token_id, value in entry.items():
            assert abs(value - float(row[token_id])) < 1e-4
        assert result.token_ids[step] in entry
