"""Tree attention on the torch path against a per-query reference (each query's visible keys, by hand)."""

from __future__ import annotations

import pytest
import torch

from shoal.engine.kernels.torch_backend import TorchBackend
from shoal.engine.spec.token_tree import DraftTree
from shoal.engine.spec.tree_attention import TreeAttentionBackend, tree_attention_mask

TREE = DraftTree((11, 12, 13, 14, 15), (-1, 0, -1, 1, 2))  # two branches: 0-1-3 and 2-4


def test_mask_sees_context_ancestors_and_self() -> None:
    mask = tree_attention_mask(TREE, q_len=6, context_len=9, device=torch.device("cpu"))
    # context 0..3 (4 tokens, the last one is the real query); nodes in slots 4..8
    assert mask[0].tolist() == [True] * 4 + [False] * 5
    assert mask[1 + 3].tolist() == [True] * 4 + [True, True, False, True, False]
    assert mask[1 + 4].tolist() == [True] * 4 + [False, False, True, False, True]


def reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: list[list[int]], scale: float) -> torch.Tensor:
    """q [n, Hq, D], keys/values [L, Hk, D]: softmax attention of each query over its visible positions."""
    group = q.shape[1] // keys.shape[1]
    out = torch.empty_like(q)
    for i, positions in enumerate(visible):
        k = keys[positions].repeat_interleave(group, dim=1)  # [l, Hq, D]
        v = values[positions].repeat_interleave(group, dim=1)
        weights = torch.softmax(torch.einsum("hd,lhd->hl", q[i], k) * scale, dim=-1)
        out[i] = torch.einsum("hl,lhd->hd", weights, v)
    return out


@pytest.mark.parametrize("tree", [TREE, DraftTree.chain([11, 12, 13, 14, 15])], ids=["branched", "chain"])
@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_tree_backend_matches_reference_in_a_mixed_batch(num_kv_heads: int, tree: DraftTree) -> None:
    gen = torch.Generator().manual_seed(0)
    block_size, head_dim, num_q_heads = 4, 8, 4
    ops = TorchBackend()
    k_cache = ops.allocate_kv_cache(16, block_size, num_kv_heads, head_dim, torch.float32, "cpu")
    v_cache = ops.allocate_kv_cache(16, block_size, num_kv_heads, head_dim, torch.float32, "cpu")
    k_cache.copy_(torch.randn(k_cache.shape, generator=gen))
    v_cache.copy_(torch.randn(v_cache.shape, generator=gen))
    # batch row 0: a decode with the 5-node tree (context 10 incl. nodes); row 1: a plain 3-token chunk (context 7)
    tables = torch.tensor([[5, 2, 9, 0], [7, 1, 0, 0]], dtype=torch.int32)
    q = torch.randn(9, num_q_heads, head_dim, generator=gen)
    cu = torch.tensor([0, 6, 9], dtype=torch.int32)
    ctx = torch.tensor([10, 7], dtype=torch.int32)
    out = TreeAttentionBackend(ops, {0: tree}).paged_attention(q, k_cache, v_cache, tables, cu, ctx, 0.3, 6, 10)

    def seq_kv(cache: torch.Tensor, row: int, length: int) -> torch.Tensor:
        return torch.stack([cache[int(tables[row, p // block_size]), p % block_size] for p in range(length)])

    visible = [list(range(5))] + [list(range(5)) + [5 + a for a in tree.ancestors_or_self(j)] for j in range(5)]
    want_tree = reference(q[:6], seq_kv(k_cache, 0, 10), seq_kv(v_cache, 0, 10), visible, 0.3)
    want_plain = reference(q[6:], seq_kv(k_cache, 1, 7), seq_kv(v_cache, 1, 7), [list(range(p + 1)) for p in (4, 5, 6)], 0.3)
    torch.testing.assert_close(out[:6], want_tree, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[6:], want_plain, atol=1e-5, rtol=1e-5)
