"""Decode steps: Triton backend (graphs on/off) vs the torch reference backend, fp32 and bf16.

Tolerances (max abs difference of hidden states of magnitude O(1)): fp32 1e-4; bf16 6e-2 (bf16
keeps 8 mantissa bits; the two backends round at different points). Without a GPU only the
fp32 graphs-off case runs (Triton's interpreter yields NaN for bf16 elementwise ops on CPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shoal.engine.attention_context import AttentionContext
from shoal.engine.cuda_graph import DecodeCudaGraphs
from shoal.engine.kernels import get_backend
from shoal.engine.model_config import ModelConfig
from shoal.engine.models.llama import LlamaForCausalLM

HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
    pytest.param("cpu", marks=[pytest.mark.kernels, pytest.mark.skipif(HAS_CUDA, reason="the CUDA case runs")]),
]
ATOL = {torch.float32: 1e-4, torch.bfloat16: 6e-2}


def tiny_model(dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    config = ModelConfig(
        architecture="llama", vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
        max_position_embeddings=256, tie_word_embeddings=False, attention_bias=False, qk_norm=False,
        bos_token_id=None, eos_token_ids=(),
    )  # fmt: skip
    return LlamaForCausalLM(config, dtype=dtype, device=device).random_init_(std=0.1, seed=0)


def decode_batch(device: str, block_size: int) -> dict[str, torch.Tensor]:
    """Three decoding sequences (contexts 5, 9, 2) over scattered blocks."""
    context_lens = torch.tensor([5, 9, 2], dtype=torch.int32)
    tables = torch.tensor([[7, 3, 0], [1, 12, 9], [5, 0, 0]], dtype=torch.int32)
    positions = (context_lens - 1).long()
    slots = torch.tensor(
        [int(tables[b, p // block_size]) * block_size + p % block_size for b, p in enumerate(positions.tolist())]
    )
    ids = torch.tensor([3, 77, 121])
    batch = {"ids": ids, "positions": positions, "slots": slots, "tables": tables, "context_lens": context_lens}
    return {k: v.to(device) for k, v in batch.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_graphs", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_decode_matches_torch(device: str, use_graphs: bool, dtype: torch.dtype) -> None:
    if use_graphs and device != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    if dtype == torch.bfloat16 and device != "cuda":
        pytest.skip("Triton's CPU interpreter computes bf16 elementwise ops as NaN (numpy has no bf16)")
    torch.manual_seed(0)
    model = tiny_model(dtype, device)
    block_size, num_blocks = 4, 16
    shape = (num_blocks, block_size, 2, 16)
    tri, ref = get_backend("triton", device), get_backend("torch", device)
    caches = [(tri.allocate_kv_cache(*shape, dtype, device), tri.allocate_kv_cache(*shape, dtype, device)) for _ in range(2)]
    for k, v in caches:
        k.copy_(torch.randn(shape, dtype=dtype))
        v.copy_(torch.randn(shape, dtype=dtype))
    ref_caches = [(k.clone(), v.clone()) for k, v in caches]
    b = decode_batch(device, block_size)
    graphs = DecodeCudaGraphs(model, tri, caches, max_batch_size=8, max_blocks_per_seq=3, use_graphs=use_graphs)
    with torch.inference_mode():
        if use_graphs:
            graphs.capture_all()
            assert sorted(graphs._graphs) == graphs.buckets
        ours = graphs.run(b["ids"], b["positions"], b["slots"], b["tables"], b["context_lens"]).clone()
        ctx = AttentionContext(
            ops=ref, kv_caches=ref_caches, slot_mapping=b["slots"], block_tables=b["tables"],
            cu_seqlens_q=torch.arange(4, dtype=torch.int32, device=device), context_lens=b["context_lens"],
            max_q_len=1, max_context_len=9,
        )  # fmt: skip
        expected = model(b["ids"], b["positions"], ctx)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.float(), expected.float(), atol=ATOL[dtype], rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_engine_captures_at_start_and_graphs_change_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.engine import LLM, SamplingParams
    from support.tiny_models import build_tiny_checkpoint

    folder = build_tiny_checkpoint("llama", tmp_path / "llama")
    prompts = [[5, 9, 13, 200], [7, 7, 7], [100, 200, 300, 400, 500, 600]]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    free_before = torch.cuda.mem_get_info()[0]
    llm = LLM(str(folder), device="cuda", dtype="float32", kernels="triton", max_num_seqs=16)
    runner = llm.engine.runner
    assert runner.decode_graphs is not None
    assert sorted(runner.decode_graphs._graphs) == runner.decode_graphs.buckets  # all captured at start-up
    kv_bytes = runner.num_blocks * runner._block_bytes()
    assert 0.5 * free_before < kv_bytes < free_before  # KV pool sized from the free GPU memory
    with_graphs = [list(r.token_ids) for r in llm.generate(prompt_token_ids=prompts, params=params)]
    del llm, runner
    torch.cuda.empty_cache()
    monkeypatch.setenv("SHOAL_CUDA_GRAPHS", "0")
    eager = LLM(str(folder), device="cuda", dtype="float32", kernels="triton", max_num_seqs=16, kv_cache_memory_gb=1)
    assert eager.engine.runner.decode_graphs is None
    assert [list(r.token_ids) for r in eager.generate(prompt_token_ids=prompts, params=params)] == with_graphs
