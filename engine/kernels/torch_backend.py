"""Torch reference kernels: the CPU path and the oracle every Triton kernel is tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shoal.engine.kernels.backend import KernelBackend


class TorchBackend(KernelBackend):
    name = "torch"

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return (x32 * weight.float()).to(x.dtype)

    def fused_add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        residual = x + residual
        return self.rms_norm(residual, weight, eps), residual

    def rotary(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)  # [T, D/2] each
        cos = cos.unsqueeze(1)
        sin = sin.unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up

    def store_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        keep = slot_mapping >= 0
        if not bool(keep.all()):
            k, v, slot_mapping = k[keep], v[keep], slot_mapping[keep]
        num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v.to(v_cache.dtype))

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
        """Gathers each sequence's K/V into a padded batch and runs one masked SDPA.

        Padding is masked out, so the result equals per-sequence attention; one batched
        call keeps the CPU path fast for decode-heavy batches.
        """
        num_seqs = context_lens.shape[0]
        total_tokens, num_q_heads, head_dim = q.shape
        block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
        device = q.device
        cu = cu_seqlens_q.to(torch.long)
        q_lens = cu[1:] - cu[:-1]
        ctx = context_lens.to(torch.long)

        # Whole blocks are gathered (contiguous copies), then trimmed to the longest context: [B, Hk, L, D]
        num_table_blocks = min(block_tables.shape[1], -(-max_context_len // block_size))
        table = block_tables[:, :num_table_blocks].to(torch.long)
        used_blocks = (ctx + block_size - 1) // block_size
        table = table.masked_fill(torch.arange(num_table_blocks, device=device) >= used_blocks.unsqueeze(1), 0)
        pos = torch.arange(max_context_len, device=device)
        key_valid = pos.unsqueeze(0) < ctx.unsqueeze(1)  # [B, L]
        keys = k_cache[table].flatten(1, 2)[:, :max_context_len].transpose(1, 2)
        values = v_cache[table].flatten(1, 2)[:, :max_context_len].transpose(1, 2)

        if max_q_len == 1:  # pure decode: one query per sequence, no scatter needed
            seq_of_token = idx_in_seq = None
            padded_q = q.unsqueeze(2)  # [B, Hq, 1, D]
        else:  # queries scattered into [B, Hq, Qmax, D]
            seq_of_token = torch.repeat_interleave(
                torch.arange(num_seqs, device=device), q_lens, output_size=total_tokens
            )
            idx_in_seq = torch.arange(total_tokens, device=device) - cu[seq_of_token]
            padded_q = q.new_zeros(num_seqs, max_q_len, num_q_heads, head_dim)
            padded_q[seq_of_token, idx_in_seq] = q
            padded_q = padded_q.transpose(1, 2)

        # Causal mask with each query's absolute position: ctx - q_len + i
        q_pos = (ctx - q_lens).unsqueeze(1) + torch.arange(max_q_len, device=device).unsqueeze(0)  # [B, Qmax]
        mask = (pos.view(1, 1, -1) <= q_pos.unsqueeze(2)) & key_valid.unsqueeze(1)  # [B, Qmax, L]
        out = F.scaled_dot_product_attention(
            padded_q,
            keys.to(q.dtype),
            values.to(q.dtype),
            attn_mask=mask.unsqueeze(1),
            scale=scale,
            enable_gqa=num_q_heads != num_kv_heads,
        )  # [B, Hq, Qmax, D]
        if seq_of_token is None:
            return out.squeeze(2)
        return out.transpose(1, 2)[seq_of_token, idx_in_seq]

    def top_k_top_p_min_p(
        self, logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
    ) -> torch.Tensor:
        """One descending sort per row gives each filter's cutoff value; see the ABC for the rule."""
        vocab = logits.shape[-1]
        logits = logits.float()
        row_max = logits.max(dim=-1, keepdim=True).values
        cutoff = row_max + torch.log(min_p.float().clamp(min=0.0)).unsqueeze(1)  # min-p; log(0) = -inf
        sorted_vals = logits.sort(dim=-1, descending=True).values
        k = top_k.to(torch.long)
        k = torch.where((k <= 0) | (k > vocab), vocab, k).unsqueeze(1)
        kth = sorted_vals.gather(1, k - 1)  # top-k cutoff (ties at it survive)
        survivors = torch.where(sorted_vals >= kth, sorted_vals, float("-inf"))
        probs = torch.softmax(survivors, dim=-1)
        mass_above = torch.cumsum(probs, dim=-1) - probs  # first of a tie run: mass strictly above it
        keep_count = (mass_above < top_p.float().unsqueeze(1)).sum(dim=-1, keepdim=True).clamp(min=1)
        top_p_cut = torch.where(top_p.unsqueeze(1) >= 1.0, float("-inf"), sorted_vals.gather(1, keep_count - 1))
        cutoff = torch.maximum(torch.maximum(cutoff, kth), top_p_cut)
        return torch.where(logits >= cutoff, logits, float("-inf"))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    half = x.shape[-1] // 2
    x1, x2 = x32[..., :half], x32[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
