"""The Triton paged-attention kernel with a drafted token tree, against the torch tree path.

Mixed batches: a decode verifying a tree, a plain decode and a prefill chunk in one launch.
"""

from __future__ import annotations

import pytest
import torch

from shoal.engine.kernels.torch_backend import TorchBackend
from shoal.engine.kernels.triton.paged_attention import paged_attention
from shoal.engine.spec.token_tree import DraftTree
from shoal.engine.spec.tree_attention import TreeAttentionBackend, tree_bits

pytestmark = pytest.mark.kernels

TREES = [
    DraftTree((1, 2, 3, 4, 5, 6), (-1, 0, -1, 1, 2, 0)),
    DraftTree.chain([7, 8, 9]),
]


@pytest.mark.parametrize("tree", TREES, ids=["branches", "chain"])
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "block_size"), [(4, 2, 4), (3, 1, 16)])
def test_tree_kernel_matches_torch(tree: DraftTree, num_q_heads: int, num_kv_heads: int, block_size: int) -> None:
    gen = torch.Generator().manual_seed(1)
    head_dim = 16
    num_blocks = 24
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=gen)
    m = len(tree)
    # rows: decode + tree (context 21 + m), plain decode (context 9), prefill chunk of 5 (context 13)
    q_lens = [1 + m, 1, 5]
    ctx = torch.tensor([21 + m, 9, 13], dtype=torch.int32)
    cu_list = [0, q_lens[0], q_lens[0] + 1, sum(q_lens)]
    cu = torch.tensor(cu_list, dtype=torch.int32)
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    per_seq = -(-(21 + m) // block_size) + 1
    tables = torch.stack([perm[i * per_seq : (i + 1) * per_seq] for i in range(3)]) % num_blocks
    q = torch.randn(sum(q_lens), num_q_heads, head_dim, generator=gen)
    torch_cache = [TorchBackend().allocate_kv_cache(num_blocks, block_size, num_kv_heads, head_dim, torch.float32, "cpu")
                   for _ in range(2)]  # fmt: skip
    torch_cache[0].copy_(k_cache)
    torch_cache[1].copy_(v_cache)
    want = TreeAttentionBackend(TorchBackend(), {0: tree}).paged_attention(
        q, torch_cache[0], torch_cache[1], tables, cu, ctx, 0.25, max(q_lens), int(ctx.max())
    )
    bits, draft_lens = tree_bits({0: tree}, cu_list, q.device)
    got = paged_attention(
        q, k_cache, v_cache, tables, cu, ctx, 0.25, max(q_lens), int(ctx.max()), tree_bits=bits, draft_lens=draft_lens
    )
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
