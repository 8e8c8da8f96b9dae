"""KV-cache write against the torch reference: exact (a copy), -1 slots skipped, other slots untouched."""

from __future__ import annotations

import pytest
import torch

from shoal.engine.kernels import KernelBackend

pytestmark = pytest.mark.kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("block_size", "num_kv_heads", "head_dim"), [(1, 2, 16), (16, 3, 24), (128, 1, 32)])
def test_store_kv_matches_reference(
    ref: KernelBackend, tri: KernelBackend, gen: torch.Generator,
    dtype: torch.dtype, block_size: int, num_kv_heads: int, head_dim: int,
) -> None:  # fmt: skip
    num_blocks, tokens = max(4, 24 // block_size + 2), 9
    # k and v as strided views of one fused projection, like the model's qkv split.
    kv = torch.randn(tokens, 2 * num_kv_heads * head_dim, generator=gen).to(dtype)
    k = kv[:, : num_kv_heads * head_dim].view(tokens, num_kv_heads, head_dim)
    v = kv[:, num_kv_heads * head_dim :].view(tokens, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    slots[torch.tensor([1, 4, 8])] = -1  # padding / already-cached tokens: skipped
    # Caches start poisoned (NaN); both backends must write exactly the same slots.
    caches = [torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype) for _ in range(4)]
    ref.store_kv(k, v, caches[0], caches[1], slots)
    tri.store_kv(k, v, caches[2], caches[3], slots)
    torch.testing.assert_close(caches[2], caches[0], atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(caches[3], caches[1], atol=0, rtol=0, equal_nan=True)
    written = caches[2].view(-1, num_kv_heads, head_dim)[slots[slots >= 0]]
    torch.testing.assert_close(written, k[slots >= 0], atol=0, rtol=0)
    assert caches[2].isnan().sum() == caches[2].numel() - 6 * num_kv_heads * head_dim
