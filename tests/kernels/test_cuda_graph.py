"""Decode CUDA-graph padding rules, checked on CPU with the graphs' eager fallback.

A real batch padded up to its bucket (slot -1, context 1, block 0) must give the same hidden
states as the unpadded batch and leave the KV cache exactly as the unpadded step does.
Tolerance: fp32, 1e-5 (same kernels, the padded rows only add independent programs).
"""

from __future__ import annotations

import pytest
import torch

from shoal.engine.attention_context import AttentionContext
from shoal.engine.cuda_graph import DecodeCudaGraphs, default_buckets
from shoal.engine.kernels import KernelBackend
from shoal.engine.model_config import ModelConfig
from shoal.engine.models.llama import LlamaForCausalLM

pytestmark = pytest.mark.kernels


def test_default_buckets() -> None:
    assert default_buckets(1) == [1]
    assert default_buckets(8) == [1, 2, 4, 8]
    assert default_buckets(100) == [1, 2, 4, 8, 16, 32, 64, 96, 100]
    assert default_buckets(256)[-3:] == [192, 224, 256]


def tiny_model() -> LlamaForCausalLM:
    config = ModelConfig(
        architecture="llama", vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
        max_position_embeddings=256, tie_word_embeddings=False, attention_bias=False, qk_norm=False,
        bos_token_id=None, eos_token_ids=(),
    )  # fmt: skip
    return LlamaForCausalLM(config, dtype=torch.float32, device="cpu").random_init_(std=0.1, seed=0)


def test_padded_bucket_matches_unpadded_step(tri: KernelBackend, gen: torch.Generator) -> None:
    model = tiny_model()
    block_size, num_blocks, max_blocks = 4, 16, 6
    shape = (num_blocks, block_size, 2, 16)
    caches = [(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)) for _ in range(2)]
    caches_copy = [(k.clone(), v.clone()) for k, v in caches]
    # Three decoding sequences (contexts 5, 9, 2, new token included) over scattered blocks.
    context_lens = torch.tensor([5, 9, 2], dtype=torch.int32)
    block_tables = [[7, 3], [1, 12, 9], [5]]
    width = max(map(len, block_tables))
    tables = torch.zeros(3, width, dtype=torch.int32)
    for row, table in enumerate(block_tables):
        tables[row, : len(table)] = torch.tensor(table, dtype=torch.int32)
    positions = (context_lens - 1).long()
    slots = torch.tensor(
        [int(tables[b, p // block_size]) * block_size + p % block_size for b, p in enumerate(positions.tolist())]
    )
    input_ids = torch.randint(0, 128, (3,), generator=gen)

    graphs = DecodeCudaGraphs(model, tri, caches, max_batch_size=8, max_blocks_per_seq=max_blocks, use_graphs=False)
    assert graphs.bucket_for(3) == 4 and graphs.supports(3, width) and not graphs.supports(9, 1)
    with torch.inference_mode():
        padded = graphs.run(input_ids, positions, slots, tables, context_lens).clone()
        ctx = AttentionContext(
            ops=tri, kv_caches=caches_copy, slot_mapping=slots, block_tables=tables,
            cu_seqlens_q=torch.arange(4, dtype=torch.int32), context_lens=context_lens,
            max_q_len=1, max_context_len=9,
        )  # fmt: skip
        direct = model(input_ids, positions, ctx)
    torch.testing.assert_close(padded, direct, atol=1e-5, rtol=0)
    for (k, v), (k2, v2) in zip(caches, caches_copy, strict=True):
        # The real rows' new K/V agree to rounding (batch 4 vs 3 matmuls); every other slot is untouched.
        untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
        untouched[slots] = False
        for padded_cache, direct_cache in ((k, k2), (v, v2)):
            flat, flat_direct = padded_cache.view(-1, 2, 16), direct_cache.view(-1, 2, 16)
            assert torch.equal(flat[untouched], flat_direct[untouched]), "padding rows must not write the KV cache"
            torch.testing.assert_close(flat[slots], flat_direct[slots], atol=1e-5, rtol=0)
