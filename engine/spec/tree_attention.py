"""Attention for a step that verifies drafts: drafted tree nodes see their context and ancestors only.

A sequence with a draft of ``m`` nodes has its ``m`` nodes as its last query tokens and its
last ``m`` cache slots. Node ``j`` attends to every cache position before the draft and to
the draft slots of its ancestors and itself; sequences without a draft keep the backend's
causal attention, and so do single-branch drafts (their ancestors are exactly the tokens
before them, so the backend's causal kernel for prompt chunks serves them without a mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shoal.engine.kernels.backend import KernelBackend
from shoal.engine.spec.token_tree import DraftTree


def tree_attention_mask(tree: DraftTree, q_len: int, context_len: int, device: torch.device) -> torch.Tensor:
    """``[q_len, context_len]`` bool: which cache positions each query of a drafting sequence sees.

    The first ``q_len - m`` queries are the sequence's own tokens (causal, blind to the draft),
    the last ``m`` are the draft's nodes.
    """
    m = len(tree)
    real = q_len - m
    first_draft_slot = context_len - m
    mask = torch.zeros((q_len, context_len), dtype=torch.bool)
    for i in range(real):
        mask[i, : first_draft_slot - real + i + 1] = True
    mask[real:, :first_draft_slot] = True
    for j in range(m):
        for ancestor in tree.ancestors_or_self(j):
            mask[real + j, first_draft_slot + ancestor] = True
    return mask.to(device)


def tree_bits(trees: dict[int, DraftTree], cu_seqlens: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel's tree mask: per query token, a bit per draft node it sees (its ancestors
    and itself; 0 for tokens that are not draft nodes), and per sequence its number of nodes."""
    bits = [0] * cu_seqlens[-1]
    draft_lens = [0] * (len(cu_seqlens) - 1)
    for b, tree in trees.items():
        draft_lens[b] = len(tree)
        first = cu_seqlens[b + 1] - len(tree)
        for j in range(len(tree)):
            bits[first + j] = sum(1 << a for a in tree.ancestors_or_self(j))
    return (
        torch.tensor(bits, dtype=torch.int64, device=device),
        torch.tensor(draft_lens, dtype=torch.int32, device=device),
    )


class TreeAttentionBackend(KernelBackend):
    """``inner``'s ops, with tree-masked attention for the sequences (batch rows) in ``trees``."""

    name = "tree"

    def __init__(self, inner: KernelBackend, trees: dict[int, DraftTree]) -> None:
        self.inner = inner
        self.trees = trees
        self.branched = {b: tree for b, tree in trees.items() if not tree.is_chain}
        """The drafts that need a tree mask; chains take the causal path."""
        self.name = inner.name
        self._masks: dict[int, torch.Tensor] = {}
        self._tree_bits: tuple[torch.Tensor, torch.Tensor] | None = None
        """Per batch row, built by the first layer and reused by the others."""

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return self.inner.rms_norm(x, weight, eps)

    def fused_add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.fused_add_rms_norm(x, residual, weight, eps)

    def rotary(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.rotary(q, k, positions, cos_sin_cache)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.silu_and_mul(x)

    def store_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        self.inner.store_kv(k, v, k_cache, v_cache, slot_mapping)

    def top_k_top_p_min_p(
        self, logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
    ) -> torch.Tensor:
        return self.inner.top_k_top_p_min_p(logits, top_k, top_p, min_p)

    def paged_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        cu_seqlens_q: torch.Tensor,
        context_lens: torch.Tensor,
        scale: float,
        max_q_len: int,
        max_context_len: int,
    ) -> torch.Tensor:
        cu = cu_seqlens_q.tolist()
        ctx = context_lens.tolist()
        if self.inner.name == "triton":  # the Triton kernel masks the tree itself, in one launch
            from shoal.engine.kernels.triton.paged_attention import paged_attention as triton_paged_attention

            if self._tree_bits is None:
                self._tree_bits = tree_bits(self.trees, cu, q.device)
            bits, draft_lens = self._tree_bits
            return triton_paged_attention(
                q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale, max_q_len, max_context_len,
                tree_bits=bits, draft_lens=draft_lens,
            )  # fmt: skip
        if not self.branched:
            return self.inner.paged_attention(
                q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale, max_q_len, max_context_len
            )
        out = torch.empty_like(q)
        plain = [b for b in range(len(ctx)) if b not in self.branched]
        if plain:
            rows = torch.cat([torch.arange(cu[b], cu[b + 1]) for b in plain]).to(q.device)
            q_lens = [cu[b + 1] - cu[b] for b in plain]
            sub_cu = torch.tensor(
                [0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=q.device
            )
            index = torch.tensor(plain, device=q.device)
            out[rows] = self.inner.paged_attention(
                q[rows], k_cache, v_cache, block_tables[index], sub_cu, context_lens[index], scale,
                max(q_lens), max(ctx[b] for b in plain),
            )  # fmt: skip
        for b, tree in self.branched.items():
            q_len = cu[b + 1] - cu[b]
            mask = self._masks.get(b)
            if mask is None:
                group = q.shape[1] // k_cache.shape[2]  # query heads per KV head
                mask = self._masks[b] = tree_attention_mask(tree, q_len, ctx[b], q.device).repeat(group, 1)
            out[cu[b] : cu[b + 1]] = self._tree_attention(
                q[cu[b] : cu[b + 1]], k_cache, v_cache, block_tables[b], ctx[b], mask, scale
            )
        return out

    @staticmethod
    def _tree_attention(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        table: torch.Tensor,
        length: int,
        mask: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """``mask``: the tree mask repeated once per query head of a KV head's group."""
        block_size = k_cache.shape[1]
        blocks = table[: -(-length // block_size)].to(torch.long)
        keys = _gather(k_cache, blocks, length).to(q.dtype)  # [Hk, L, D]
        values = _gather(v_cache, blocks, length).to(q.dtype)
        # GQA without copying K/V: a KV head's query group stacks along the query axis
        num_q, num_heads, head_dim = q.shape
        num_kv_heads = keys.shape[0]
        group = num_heads // num_kv_heads
        queries = q.transpose(0, 1).reshape(num_kv_heads, group * num_q, head_dim)
        res = F.scaled_dot_product_attention(
            queries.unsqueeze(0), keys.unsqueeze(0), values.unsqueeze(0), attn_mask=mask, scale=scale
        )
        return res[0].reshape(num_heads, num_q, head_dim).transpose(0, 1)


def _gather(cache: torch.Tensor, blocks: torch.Tensor, length: int) -> torch.Tensor:
    """One sequence's first ``length`` cached tokens as ``[Hk, L, D]``, read in the cache's memory order."""
    head_major = cache.permute(2, 0, 1, 3)  # [Hk, num_blocks, block_size, D]
    if head_major.is_contiguous():  # the torch backend's layout: whole blocks per head are contiguous
        return torch.index_select(head_major, 1, blocks).flatten(1, 2)[:, :length]
    return cache.index_select(0, blocks).flatten(0, 1)[:length].transpose(0, 1)
