"""Neox-style (rotate-half) rotary embedding of q and k in one launch.

The cos/sin cache is built by the model (that is where llama3 / linear / dynamic scaling
lives); the kernel only applies it, so every scaling variant shares this kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(
    src_ptr, dst_ptr, token, num_heads, stride_st, stride_sh, stride_dt, stride_dh, cos, sin, half,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_HALF)
    mask = (heads[:, None] < num_heads) & (dims[None, :] < half)
    src = src_ptr + token * stride_st + heads[:, None] * stride_sh + dims[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
    dst = dst_ptr + token * stride_dt + heads[:, None] * stride_dh + dims[None, :]
    ty = dst_ptr.dtype.element_ty
    tl.store(dst, (x1 * cos[None, :] - x2 * sin[None, :]).to(ty), mask=mask)
    tl.store(dst + half, (x2 * cos[None, :] + x1 * sin[None, :]).to(ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, pos_ptr, cache_ptr,
    num_q_heads, num_kv_heads, half,
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_qot, stride_qoh, stride_kot, stride_koh, stride_cache,
    BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + token).to(tl.int64)
    dims = tl.arange(0, BLOCK_HALF)
    cos = tl.load(cache_ptr + pos * stride_cache + dims, mask=dims < half, other=0.0)
    sin = tl.load(cache_ptr + pos * stride_cache + half + dims, mask=dims < half, other=0.0)
    _rotate_heads(q_ptr, q_out_ptr, token, num_q_heads, stride_qt, stride_qh, stride_qot, stride_qoh,
                  cos, sin, half, BLOCK_HQ, BLOCK_HALF)  # fmt: skip
    _rotate_heads(k_ptr, k_out_ptr, token, num_kv_heads, stride_kt, stride_kh, stride_kot, stride_koh,
                  cos, sin, half, BLOCK_HK, BLOCK_HALF)  # fmt: skip


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def rotary(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated copies of q ``[T, Hq, D]`` and k ``[T, Hk, D]`` (views with strided tokens are fine)."""
    q, k = _last_dim_contiguous(q), _last_dim_contiguous(k)
    cache = _last_dim_contiguous(cos_sin_cache.float())
    q_out, k_out = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)
    num_tokens, num_q_heads, head_dim = q.shape
    if num_tokens > 0:
        half = head_dim // 2
        _rotary_kernel[(num_tokens,)](
            q, k, q_out, k_out, positions, cache,
            num_q_heads, k.shape[1], half,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1), cache.stride(0),
            BLOCK_HQ=triton.next_power_of_2(num_q_heads), BLOCK_HK=triton.next_power_of_2(k.shape[1]),
            BLOCK_HALF=triton.next_power_of_2(half), num_warps=4,
        )  # fmt: skip
    return q_out, k_out
