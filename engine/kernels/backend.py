"""The small interface every kernel backend implements.

Shapes (T = tokens in the step, B = sequences, Hq/Hk = query/KV heads, D = head dim):

- ``k_cache``/``v_cache``: ``[num_blocks, block_size, Hk, D]``; a token's slot is
  ``block_id * block_size + offset``.
- ``paged_attention``: queries of many sequences packed back to back (``cu_seqlens_q``
  ``[B+1]`` int32); ``context_lens[b]`` counts *all* of sequence b's tokens in the cache,
  the new ones included, so query i of sequence b sits at position
  ``context_lens[b] - q_len_b + i`` and attends causally to cache positions ``0..pos``.
  This one call covers prefill chunks and decodes together (Dynamic SplitFuse batches).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class KernelBackend(ABC):
    """One implementation of the engine's hot-path ops."""

    name: str = "abstract"

    def allocate_kv_cache(
        self,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> torch.Tensor:
        """A zeroed K or V cache of logical shape ``[num_blocks, block_size, Hk, D]``.

        Ops read caches through their strides, so a backend may pick the memory layout
        that suits its kernels; this default is contiguous.
        """
        return torch.zeros((num_blocks, block_size, num_kv_heads, head_dim), dtype=dtype, device=device)

    @abstractmethod
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """``x / rms(x) * weight`` over the last dim; computed in fp32, returned in x.dtype."""

    @abstractmethod
    def fused_add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``residual = x + residual``; returns ``(rms_norm(residual), residual)``."""

    @abstractmethod
    def rotary(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Neox-style (rotate-half) rotary embedding.

        q ``[T, Hq, D]``, k ``[T, Hk, D]``, positions ``[T]`` int64,
        ``cos_sin_cache`` ``[max_pos, D]`` fp32 holding ``cat(cos, sin)`` of the D/2 frequencies.
        """

    @abstractmethod
    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``silu(x[..., :I]) * x[..., I:]`` for ``x`` of last dim ``2I``."""

    @abstractmethod
    def store_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """Write k/v ``[T, Hk, D]`` into the caches at ``slot_mapping[T]`` (int64; -1 = skip)."""

    @abstractmethod
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
        """Causal varlen attention over the paged cache; returns ``[T, Hq, D]``.

        ``block_tables`` ``[B, max_blocks]`` int32 (unused entries are ignored),
        ``max_q_len``/``max_context_len`` are host-side bounds (no device sync needed).
        """

    @abstractmethod
    def top_k_top_p_min_p(
        self, logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
    ) -> torch.Tensor:
        """Filtered copy of ``logits`` ``[B, V]`` fp32: dropped entries become ``-inf``.

        Per row b (``top_k`` ``[B]`` int, 0 = off; ``top_p``/``min_p`` ``[B]`` fp32, 1.0/0.0 = off),
        an entry x is kept iff all three hold (ties at a boundary are all kept):

        - top-k: x >= the k-th largest value;
        - top-p, over the top-k survivors renormalised: the probability mass of survivors
          strictly greater than x is < top_p (the smallest nucleus reaching top_p);
        - min-p: ``p(x) >= min_p * p_max``, i.e. ``x >= max + log(min_p)``.

        Deterministic (no sampling here), so per-request seeded sampling afterwards stays reproducible.
        """
