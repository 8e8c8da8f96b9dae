"""Paged attention (one varlen kernel for prefill chunks + decodes) against the torch reference.

Tolerances (max abs error on outputs of magnitude ~1): fp32 1e-4 (IEEE dots), fp16 5e-3
(fp16 inputs to both dots, fp32 accumulation; the reference rounds differently).
"""

from __future__ import annotations

import pytest
import torch

from shoal.engine.kernels import KernelBackend
from shoal.engine.kernels.triton.paged_attention import paged_attention

pytestmark = pytest.mark.kernels

TOL = {torch.float32: 1e-4, torch.float16: 5e-3}


def make_batch(
    seqs: list[tuple[int, int]],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    gen: torch.Generator,
) -> dict:
    """A batch of (q_len, context_len) sequences over a shuffled (non-contiguous) block pool.

    Returns the reference's inputs (unused cache slots zero) and a NaN-poisoned cache copy
    for the kernel: it must never read a slot outside a sequence's context.
    """
    blocks_per_seq = [-(-ctx // block_size) for _, ctx in seqs]
    num_blocks = sum(blocks_per_seq) + 3  # spare blocks nobody owns
    max_blocks = max(blocks_per_seq) + 1
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    block_tables = torch.full((len(seqs), max_blocks), 10**6, dtype=torch.int32)  # garbage beyond use
    k_cache = torch.zeros(num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    k_poison = torch.full_like(k_cache, float("nan"))
    v_poison = torch.full_like(v_cache, float("nan"))
    used = 0
    for b, ((_, ctx), nb) in enumerate(zip(seqs, blocks_per_seq, strict=True)):
        block_tables[b, :nb] = perm[used : used + nb]
        used += nb
        for pos in range(ctx):
            blk, off = int(block_tables[b, pos // block_size]), pos % block_size
            for cache, poison in ((k_cache, k_poison), (v_cache, v_poison)):
                cache[blk, off] = torch.randn(num_kv_heads, head_dim, generator=gen).to(dtype)
                poison[blk, off] = cache[blk, off]
    q_lens = [q for q, _ in seqs]
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return {
        "q": torch.randn(sum(q_lens), num_q_heads, head_dim, generator=gen).to(dtype),
        "k_cache": k_cache,
        "v_cache": v_cache,
        "k_poison": k_poison,
        "v_poison": v_poison,
        "block_tables": block_tables,
        "cu_seqlens_q": cu,
        "context_lens": torch.tensor([c for _, c in seqs], dtype=torch.int32),
        "scale": head_dim**-0.5,
        "max_q_len": max(q_lens),
        "max_context_len": max(c for _, c in seqs),
    }


def run_both(ref: KernelBackend, batch: dict, num_splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    args = (batch["block_tables"], batch["cu_seqlens_q"], batch["context_lens"], batch["scale"])
    bounds = (batch["max_q_len"], batch["max_context_len"])
    expected = ref.paged_attention(batch["q"], batch["k_cache"], batch["v_cache"], *args, *bounds)
    got = paged_attention(batch["q"], batch["k_poison"], batch["v_poison"], *args, *bounds, num_splits=num_splits)
    return expected, got


# (q_len, context_len): decodes, a first chunk, a middle chunk, a whole prompt, a 1-token context.
MIXED = [(1, 37), (9, 9), (6, 23), (1, 1), (17, 17), (1, 64)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim"), [(4, 4, 32), (4, 1, 16), (6, 2, 24)])
@pytest.mark.parametrize("block_size", [1, 8, 32])
def test_mixed_prefill_and_decode(
    ref: KernelBackend, gen: torch.Generator, poisoned_outputs: None,
    dtype: torch.dtype, num_q_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
) -> None:  # fmt: skip
    batch = make_batch(MIXED, num_q_heads, num_kv_heads, head_dim, block_size, dtype, gen)
    expected, got = run_both(ref, batch)
    assert not got.isnan().any()
    torch.testing.assert_close(got.float(), expected.float(), atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize(("block_size", "seqs"), [(2, [(70, 150), (1, 129)]), (128, [(70, 150)]), (16, [(1, 40)])])
def test_long_prefill_chunk_spans_tiles(
    ref: KernelBackend, gen: torch.Generator, block_size: int, seqs: list[tuple[int, int]]
) -> None:
    """Chunks longer than a query tile and contexts past one key tile; single-sequence batches too."""
    batch = make_batch(seqs, 4, 2, 16, block_size, torch.float32, gen)
    expected, got = run_both(ref, batch)
    torch.testing.assert_close(got, expected, atol=TOL[torch.float32], rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_splits", [2, 4])
def test_decode_split_kv(
    ref: KernelBackend, gen: torch.Generator, poisoned_outputs: None, dtype: torch.dtype, num_splits: int
) -> None:
    """The flash-decoding path (key range split, then merged); some splits get no keys at all."""
    batch = make_batch([(1, 130), (1, 3), (1, 65)], 8, 2, 32, 16, dtype, gen)
    expected, got = run_both(ref, batch, num_splits=num_splits)
    assert not got.isnan().any()
    torch.testing.assert_close(got.float(), expected.float(), atol=TOL[dtype], rtol=0)


def test_backend_entry_point(ref: KernelBackend, tri: KernelBackend, gen: torch.Generator) -> None:
    batch = make_batch([(3, 10), (1, 5)], 2, 1, 16, 4, torch.float32, gen)
    args = (batch["block_tables"], batch["cu_seqlens_q"], batch["context_lens"], batch["scale"], 3, 10)
    expected = ref.paged_attention(batch["q"], batch["k_cache"], batch["v_cache"], *args)
    got = tri.paged_attention(batch["q"], batch["k_poison"], batch["v_poison"], *args)
    torch.testing.assert_close(got, expected, atol=TOL[torch.float32], rtol=0)
