"""Torch reference kernels: the CPU path and the oracle every Triton kernel is tested against.

On CPU in fp32, paged attention runs our C++ kernel (``kernels/cpu/attention.py``: K/V read in
place) when it builds; the torch implementation here stays its reference and the fallback.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from shoal.engine.kernels.backend import KernelBackend
from shoal.engine.kernels.cpu.attention import attention_kernel_available, cpu_paged_attention, kernel_fits


class TorchBackend(KernelBackend):
    name = "torch"

    def __init__(self, cpu_attention_kernel: bool = True) -> None:
        """``cpu_attention_kernel=False`` keeps paged attention on the torch path (the reference)."""
        self._local = threading.local()
        self.cpu_attention_kernel = cpu_attention_kernel

    def allocate_kv_cache(
        self,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> torch.Tensor:
        """Head-major memory (``[Hk, num_blocks, block_size, D]``) behind the logical view.

        Gathering a sequence's blocks then yields ``[Hk, L, D]`` slabs that SDPA reads
        contiguously, instead of a strided ``[L, Hk, D]`` layout it has to copy.
        """
        physical = torch.zeros((num_kv_heads, num_blocks, block_size, head_dim), dtype=dtype, device=device)
        if self.cpu_attention_kernel and physical.device.type == "cpu" and dtype == torch.float32:
            attention_kernel_available()  # a first build (~40 s) at engine start-up, not in the first step
        return physical.permute(1, 2, 0, 3)

    def _workspace(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A per-thread scratch tensor reused across calls (layers run one after another)."""
        buffers: dict[str, torch.Tensor] = self._local.__dict__.setdefault("buffers", {})
        numel = 1
        for dim in shape:
            numel *= dim
        buf = buffers.get(name)
        stale = buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device
        # a buffer made under inference_mode cannot be written outside it (and vice versa for autograd)
        if stale or buf is None or buf.is_inference() != torch.is_inference_mode_enabled():
            buf = torch.empty(numel + numel // 4, dtype=like.dtype, device=like.device)
            buffers[name] = buf
        return buf[:numel].view(shape)

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
        for new, cache in ((k, k_cache), (v, v_cache)):
            physical = _head_major(cache)
            if physical is not None:  # [Hk, num_blocks * block_size, D]
                physical.flatten(1, 2).index_copy_(1, slot_mapping, new.to(cache.dtype).transpose(0, 1))
            else:
                cache.view(-1, *cache.shape[2:]).index_copy_(0, slot_mapping, new.to(cache.dtype))

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
        """Decodes in one batched SDPA over gathered blocks; each prompt chunk in its own causal SDPA.

        A chunk that starts at position 0 uses ``is_causal`` (the fused CPU kernel); a chunk
        after cached tokens needs the bottom-right-aligned causal mask. On CPU in fp32 the C++
        kernel serves the whole call instead (when it builds and the shapes fit).
        """
        if self.cpu_attention_kernel and kernel_fits(q, k_cache, v_cache) and attention_kernel_available():
            return cpu_paged_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale)
        cu = cu_seqlens_q.tolist()
        ctx = context_lens.tolist()
        q_lens = [cu[i + 1] - cu[i] for i in range(len(ctx))]
        if max_q_len == 1:
            return self._decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, max_context_len)
        out = torch.empty_like(q)
        decode_rows = [i for i, n in enumerate(q_lens) if n == 1]
        if decode_rows:
            rows = torch.tensor(decode_rows, device=q.device)
            token_rows = torch.tensor([cu[i] for i in decode_rows], device=q.device)
            out[token_rows] = self._decode_attention(
                q[token_rows], k_cache, v_cache, block_tables[rows], context_lens[rows], scale,
                max(ctx[i] for i in decode_rows),
            )
        block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
        num_q_heads = q.shape[1]
        for i, q_len in enumerate(q_lens):
            if q_len == 1:
                continue
            length = ctx[i]
            table = block_tables[i, : -(-length // block_size)].to(torch.long)
            keys = _sequence_kv(k_cache, table, length)  # [Hk, L, D]
            values = _sequence_kv(v_cache, table, length)
            if num_q_heads != num_kv_heads:
                group = num_q_heads // num_kv_heads
                keys = keys.repeat_interleave(group, dim=0)
                values = values.repeat_interleave(group, dim=0)
            queries = q[cu[i] : cu[i + 1]].transpose(0, 1).unsqueeze(0)  # [1, Hq, q_len, D]
            keys = keys.unsqueeze(0).to(q.dtype)
            values = values.unsqueeze(0).to(q.dtype)
            if length == q_len:
                res = F.scaled_dot_product_attention(queries, keys, values, is_causal=True, scale=scale)
            else:
                q_pos = torch.arange(length - q_len, length, device=q.device).unsqueeze(1)
                mask = torch.arange(length, device=q.device).unsqueeze(0) <= q_pos
                res = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)
            out[cu[i] : cu[i + 1]] = res[0].transpose(0, 1)
        return out

    def _decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        scale: float,
        max_context_len: int,
    ) -> torch.Tensor:
        """One query per sequence: gather whole blocks (contiguous copies), mask the padding, one SDPA."""
        block_size = k_cache.shape[1]
        device = q.device
        ctx = context_lens.to(torch.long)
        num_table_blocks = min(block_tables.shape[1], -(-max_context_len // block_size))
        table = block_tables[:, :num_table_blocks].to(torch.long)
        used_blocks = (ctx + block_size - 1) // block_size
        table = table.masked_fill(torch.arange(num_table_blocks, device=device) >= used_blocks.unsqueeze(1), 0)
        # index_select into a reused workspace: advanced indexing (k_cache[table]) is several
        # times slower on CPU and allocates a fresh multi-MB tensor per layer
        flat = table.flatten()
        num_seqs = q.shape[0]
        keys = self._gather_decode("k", k_cache, flat, num_seqs, max_context_len)  # [B, Hk, L, D]
        values = self._gather_decode("v", v_cache, flat, num_seqs, max_context_len)
        key_valid = torch.arange(max_context_len, device=device).unsqueeze(0) < ctx.unsqueeze(1)  # [B, L]
        # GQA without repeating K/V: a KV head's query group acts as its "query length"
        # (decode queries of one sequence share the same keys and mask)
        num_seqs, num_q_heads, head_dim = q.shape
        num_kv_heads = k_cache.shape[2]
        out = F.scaled_dot_product_attention(
            q.reshape(num_seqs, num_kv_heads, num_q_heads // num_kv_heads, head_dim),
            keys.to(q.dtype),
            values.to(q.dtype),
            attn_mask=key_valid[:, None, None, :],
            scale=scale,
        )
        return out.reshape(num_seqs, num_q_heads, head_dim)

    def _gather_decode(
        self, name: str, cache: torch.Tensor, flat_table: torch.Tensor, num_seqs: int, length: int
    ) -> torch.Tensor:
        """Every sequence's blocks as ``[B, Hk, L, D]`` (a view into a workspace)."""
        physical = _head_major(cache)
        if physical is not None:  # [Hk, num_blocks, bs, D] -> [Hk, B * blocks, bs, D]
            shape = (physical.shape[0], len(flat_table), *physical.shape[2:])
            buf = torch.index_select(physical, 1, flat_table, out=self._workspace(name, shape, cache))
            return buf.view(shape[0], num_seqs, -1, shape[-1])[:, :, :length].transpose(0, 1)
        shape = (len(flat_table), *cache.shape[1:])
        buf = torch.index_select(cache, 0, flat_table, out=self._workspace(name, shape, cache))
        return buf.view(num_seqs, -1, *cache.shape[2:])[:, :length].transpose(1, 2)

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


def _head_major(cache: torch.Tensor) -> torch.Tensor | None:
    """The ``[Hk, num_blocks, block_size, D]`` memory behind a cache view, if that is its layout."""
    physical = cache.permute(2, 0, 1, 3)
    return physical if physical.is_contiguous() else None


def _sequence_kv(cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    """One sequence's first ``length`` cached tokens as ``[Hk, L, D]``."""
    physical = _head_major(cache)
    if physical is not None:
        return torch.index_select(physical, 1, table).flatten(1, 2)[:, :length]
    return cache[table].flatten(0, 1)[:length].transpose(0, 1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    half = x.shape[-1] // 2
    x1, x2 = x32[..., :half], x32[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
