"""Attention for a step that verifies drafts: drafted tree nodes see their context and ancestors only.

A sequence with a draft of ``m`` nodes has its ``m`` nodes as its last query tokens and its
last ``m`` cache slots. Node ``j`` attends to every cache position before the draft and to
the draft slots of its ancestors and itself; sequences without a draft keep the backend's
causal attention.
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


class TreeAttentionBackend(KernelBackend):
    """``inner``'s ops, with tree-masked attention for the sequences (batch rows) in ``trees``."""

    name = "tree"

    def __init__(self, inner: KernelBackend, trees: dict[int, DraftTree]) -> None:
        self.inner = inner
        self.trees = trees
        self.name = inner.name

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
        out = torch.empty_like(q)
        plain = [b for b in range(len(ctx)) if b not in self.trees]
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
        for b, tree in self.trees.items():
            out[cu[b] : cu[b + 1]] = self._tree_attention(
                q[cu[b] : cu[b + 1]], k_cache, v_cache, block_tables[b], ctx[b], tree, scale
            )
        return out

    @staticmethod
    def _tree_attention(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        table: torch.Tensor,
        length: int,
        tree: DraftTree,
        scale: float,
    ) -> torch.Tensor:
        block_size = k_cache.shape[1]
        blocks = table[: -(-length // block_size)].to(torch.long)
        keys = k_cache[blocks].flatten(0, 1)[:length].transpose(0, 1).to(q.dtype)  # [Hk, L, D]
        values = v_cache[blocks].flatten(0, 1)[:length].transpose(0, 1).to(q.dtype)
        group = q.shape[1] // keys.shape[0]
        if group > 1:
            keys = keys.repeat_interleave(group, dim=0)
            values = values.repeat_interleave(group, dim=0)
        mask = tree_attention_mask(tree, q.shape[0], length, q.device)
        res = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0),
            keys.unsqueeze(0),
            values.unsqueeze(0),
            attn_mask=mask,
            scale=scale,
        )
        return res[0].transpose(0, 1)
