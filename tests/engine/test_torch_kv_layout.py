"""The torch backend's head-major KV cache gives the same results as the contiguous layout."""

from __future__ import annotations

import math

import torch

from shoal.engine.kernels import get_backend


def test_head_major_cache_matches_contiguous() -> None:
    ops = get_backend("torch")
    torch.manual_seed(0)
    num_blocks, block_size, kv_heads, q_heads, dim = 24, 4, 2, 6, 8
    head_major = [ops.allocate_kv_cache(num_blocks, block_size, kv_heads, dim, torch.float32, "cpu") for _ in range(2)]
    contiguous = [torch.zeros(num_blocks, block_size, kv_heads, dim) for _ in range(2)]
    assert not head_major[0].is_contiguous() and head_major[0].shape == contiguous[0].shape

    # two sequences: 10 tokens (blocks 5, 2, 9) and 6 tokens (blocks 7, 1), written in one step
    tables = torch.tensor([[5, 2, 9], [7, 1, 0]], dtype=torch.int32)
    lengths = [10, 6]
    slots = [int(tables[s, p // block_size]) * block_size + p % block_size for s, n in enumerate(lengths) for p in range(n)]
    slot_mapping = torch.tensor(slots + [-1])  # a padding slot is skipped
    k = torch.randn(len(slot_mapping), kv_heads, dim)
    v = torch.randn(len(slot_mapping), kv_heads, dim)
    ops.store_kv(k, v, *head_major, slot_mapping)
    ops.store_kv(k, v, *contiguous, slot_mapping)
    assert torch.equal(head_major[0], contiguous[0]) and torch.equal(head_major[1], contiguous[1])

    scale = 1 / math.sqrt(dim)
    context = torch.tensor(lengths, dtype=torch.int32)
    # a prefill chunk of 3 tokens for sequence 0 plus a decode for sequence 1
    q_mixed = torch.randn(4, q_heads, dim)
    cu = torch.tensor([0, 3, 4], dtype=torch.int32)
    a = ops.paged_attention(q_mixed, *head_major, tables, cu, context, scale, 3, 10)
    b = ops.paged_attention(q_mixed, *contiguous, tables, cu, context, scale, 3, 10)
    torch.testing.assert_close(a, b)
    # pure decode batch
    q_decode = torch.randn(2, q_heads, dim)
    cu = torch.tensor([0, 1, 2], dtype=torch.int32)
    a = ops.paged_attention(q_decode, *head_major, tables, cu, context, scale, 1, 10)
    b = ops.paged_attention(q_decode, *contiguous, tables, cu, context, scale, 1, 10)
    torch.testing.assert_close(a, b)
