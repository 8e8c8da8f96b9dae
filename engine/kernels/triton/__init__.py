"""The ``triton`` backend: the engine's hot-path ops as Triton kernels (GPU path).

One file per op, each kernel beside its host-side launcher; :class:`TritonBackend` binds the
launchers to the op names of :class:`~shoal.engine.kernels.backend.KernelBackend` directly.
The torch reference (``torch_backend.py``) is the oracle the tests hold every kernel to.
Importing this package imports triton; the registry only does so when the backend is chosen.
"""

from __future__ import annotations

from shoal.engine.kernels.backend import KernelBackend
from shoal.engine.kernels.triton import activation as _activation
from shoal.engine.kernels.triton import paged_attention as _attention
from shoal.engine.kernels.triton import rms_norm as _norm
from shoal.engine.kernels.triton import rotary as _rotary
from shoal.engine.kernels.triton import sampling as _sampling
from shoal.engine.kernels.triton import store_kv as _store_kv


class TritonBackend(KernelBackend):
    """Each op is its kernel's launcher (contiguous KV caches: the ABC's default allocation)."""

    name = "triton"
    rms_norm = staticmethod(_norm.rms_norm)
    fused_add_rms_norm = staticmethod(_norm.fused_add_rms_norm)
    rotary = staticmethod(_rotary.rotary)
    silu_and_mul = staticmethod(_activation.silu_and_mul)
    store_kv = staticmethod(_store_kv.store_kv)
    paged_attention = staticmethod(_attention.paged_attention)
    top_k_top_p_min_p = staticmethod(_sampling.top_k_top_p_min_p)
