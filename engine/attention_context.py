"""Per-step attention inputs shared by every layer of the model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.engine.kernels.backend import KernelBackend


@dataclass(frozen=True)
class AttentionContext:
    """What a layer needs to read and write the paged KV cache in one engine step.

    ``kv_caches[layer] = (k_cache, v_cache)``, each ``[num_blocks, block_size, Hk, D]``.
    See :class:`~shoal.engine.kernels.backend.KernelBackend` for the other fields' meaning.
    """

    ops: KernelBackend
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    slot_mapping: torch.Tensor  # [T] int64
    block_tables: torch.Tensor  # [B, max_blocks] int32
    cu_seqlens_q: torch.Tensor  # [B+1] int32
    context_lens: torch.Tensor  # [B] int32
    max_q_len: int
    max_context_len: int
