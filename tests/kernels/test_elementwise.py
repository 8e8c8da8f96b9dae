"""RMSNorm (plain and fused residual), rotary and SiLU-and-mul against the torch reference.

Tolerances (max abs error, outputs of magnitude ~1-4): fp32 1e-5 (same fp32 math, different
reduction order); fp16 outputs 2e-3 (one fp16 rounding step apart at most, ulp ~2e-3 near 4).
The fused residual sum is exact in both backends (one rounding of x + residual).
"""

from __future__ import annotations

import pytest
import torch

from shoal.engine.kernels import KernelBackend

pytestmark = pytest.mark.kernels

DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 96), (2, 3, 64), (1, 1000)])
def test_rms_norm(
    ref: KernelBackend, tri: KernelBackend, gen: torch.Generator, poisoned_outputs: None,
    dtype: torch.dtype, shape: tuple[int, ...],
) -> None:  # fmt: skip
    x, w = randn(gen, *shape, dtype=dtype), randn(gen, shape[-1], dtype=dtype)
    got = tri.rms_norm(x, w, 1e-6)
    assert got.shape == x.shape and got.dtype == dtype
    torch.testing.assert_close(got.float(), ref.rms_norm(x, w, 1e-6).float(), atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm(
    ref: KernelBackend, tri: KernelBackend, gen: torch.Generator, poisoned_outputs: None, dtype: torch.dtype
) -> None:
    # x as a strided view (every other row) checks the row stride handling.
    x_full = randn(gen, 14, 80, dtype=dtype)
    x, residual, w = x_full[::2], randn(gen, 7, 80, dtype=dtype), randn(gen, 80, dtype=dtype)
    x_before, r_before = x.clone(), residual.clone()
    out, new_residual = tri.fused_add_rms_norm(x, residual, w, 1e-5)
    ref_out, ref_residual = ref.fused_add_rms_norm(x, residual, w, 1e-5)
    torch.testing.assert_close(new_residual, ref_residual, atol=0, rtol=0)
    torch.testing.assert_close(out.float(), ref_out.float(), atol=TOL[dtype], rtol=0)
    assert torch.equal(x, x_before) and torch.equal(residual, r_before), "inputs must stay untouched"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads", "head_dim"), [(4, 2, 32), (3, 1, 80)])
def test_rotary_on_qkv_views(
    ref: KernelBackend, tri: KernelBackend, gen: torch.Generator, poisoned_outputs: None,
    dtype: torch.dtype, num_q_heads: int, num_kv_heads: int, head_dim: int,
) -> None:  # fmt: skip
    """q and k are strided views into a fused qkv projection, as the model produces them."""
    tokens, max_pos = 6, 64
    qkv = randn(gen, tokens, (num_q_heads + 2 * num_kv_heads) * head_dim, dtype=dtype)
    q = qkv[:, : num_q_heads * head_dim].view(tokens, num_q_heads, head_dim)
    k = qkv[:, num_q_heads * head_dim : (num_q_heads + num_kv_heads) * head_dim].view(tokens, num_kv_heads, head_dim)
    angles = torch.rand(max_pos, head_dim // 2, generator=gen) * 100
    cos_sin_cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
    positions = torch.randint(0, max_pos, (tokens,), generator=gen)
    got_q, got_k = tri.rotary(q, k, positions, cos_sin_cache)
    ref_q, ref_k = ref.rotary(q, k, positions, cos_sin_cache)
    torch.testing.assert_close(got_q.float(), ref_q.float(), atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(got_k.float(), ref_k.float(), atol=TOL[dtype], rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 2 * 40), (2, 3, 2 * 1100)])
def test_silu_and_mul(
    ref: KernelBackend, tri: KernelBackend, gen: torch.Generator, poisoned_outputs: None,
    dtype: torch.dtype, shape: tuple[int, ...],
) -> None:  # fmt: skip
    x = randn(gen, *shape, dtype=dtype) * 3
    got = tri.silu_and_mul(x)
    assert got.shape == (*shape[:-1], shape[-1] // 2)
    torch.testing.assert_close(got.float(), ref.silu_and_mul(x).float(), atol=TOL[dtype] * 4, rtol=0)
