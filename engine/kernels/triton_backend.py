"""The ``triton`` backend: the engine's hot-path ops as Triton kernels (GPU path).

Imported only when this backend is chosen, so importing the engine never needs triton.
Each op's kernel lives in ``kernels/triton/<op>.py`` beside its launcher; the torch
reference (``torch_backend.py``) is the oracle the tests hold every kernel to.
"""

from __future__ import annotations

import torch

from shoal.engine.kernels.backend import KernelBackend
from shoal.engine.kernels.triton import activation, paged_attention, rms_norm, rotary, sampling, store_kv


class TritonBackend(KernelBackend):
    name = "triton"

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm.rms_norm(x, weight, eps)

    def fused_add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return rms_norm.fused_add_rms_norm(x, residual, weight, eps)

    def rotary(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary.rotary(q, k, positions, cos_sin_cache)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        return activation.silu_and_mul(x)

    def store_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        store_kv.store_kv(k, v, k_cache, v_cache, slot_mapping)

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
        return paged_attention.paged_attention(
            q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale, max_q_len, max_context_len
        )

    def top_k_top_p_min_p(
        self, logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
    ) -> torch.Tensor:
        return sampling.top_k_top_p_min_p(logits, top_k, top_p, min_p)
