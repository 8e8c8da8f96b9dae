"""Paged attention on CPU with our C++ kernel (``paged_attention.cpp``): K/V read in place.

The torch path in :class:`~shoal.engine.kernels.torch_backend.TorchBackend` gathers each
sequence's blocks into a contiguous copy before SDPA; this kernel walks the block table instead
(online softmax per KV head and query group, contexts of few decodes split over the threads).
It covers fp32 on an AVX2 + FMA CPU; :func:`kernel_fits` says when a call qualifies, and the
torch path (the reference the tests compare against) serves everything else.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from types import ModuleType

import torch

from shoal.engine.kernels.cpu.build import KernelUnavailable, load_extension

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("paged_attention.cpp")
_NAME = "shoal_paged_attention"
MAX_QUERY_GROUP = 16
"""Query heads per KV head the kernel handles (one work item holds a whole group)."""


def attention_kernels() -> ModuleType:
    """The extension module, built on first use (raises :class:`KernelUnavailable`)."""
    return load_extension(_NAME, _SOURCE, "CPU paged-attention kernel")


@functools.cache
def attention_kernel_available() -> bool:
    """Whether the kernel runs here; the first call builds it (~40 s once per machine, then cached)."""
    try:
        attention_kernels()
    except KernelUnavailable as exc:
        logger.warning("paged attention uses the torch path on CPU: %s", exc)
        return False
    return True


def kernel_fits(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether this call's shapes, dtypes and layouts are ones the kernel covers."""
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    return (
        q.device.type == "cpu"
        and q.dtype == k_cache.dtype == v_cache.dtype == torch.float32
        and head_dim % 8 == 0
        and num_q_heads % num_kv_heads == 0
        and num_q_heads // num_kv_heads <= MAX_QUERY_GROUP
        and k_cache.stride(3) == 1
        and v_cache.stride(3) == 1
    )


def cpu_paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal varlen attention over the paged caches, same contract as ``KernelBackend.paged_attention``."""
    return attention_kernels().paged_attention(
        q.contiguous(),
        k_cache,
        v_cache,
        _int32_rows(block_tables),
        cu_seqlens_q.to(torch.int32).contiguous(),
        context_lens.to(torch.int32).contiguous(),
        float(scale),
    )


def _int32_rows(table: torch.Tensor) -> torch.Tensor:
    table = table.to(torch.int32)
    return table if table.stride(-1) == 1 else table.contiguous()
