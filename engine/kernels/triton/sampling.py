"""Top-k / top-p / min-p filtering of logits without a sort.

A program owns one row and finds each cutoff by a 16-way search over the fp32 values' order-
preserving int32 keys: every pass over the row counts (top-k) or sums probability mass
(top-p) at 15 pivots at once, so an exact cutoff takes at most 8 passes per filter (32 bits,
4 per pass) instead of a [B, V] sort, its temporaries and a scatter. Exact search on the
data's own values keeps it deterministic: the same logits always give the same kept set.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_FANOUT = 16


@triton.jit
def _ordered_key(x):
    """int32 whose signed order equals the fp32 order of x (negative floats get their magnitude bits flipped)."""
    bits = x.to(tl.int32, bitcast=True)
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.jit
def _search(
    row_ptr, vocab, lo, hi, floor_key, row_max, target,
    MASS: tl.constexpr, BLOCK: tl.constexpr, FANOUT: tl.constexpr,
):  # fmt: skip
    """Narrow ``[lo, hi)`` to ``hi - lo == 1`` keeping ``ok(lo)`` and ``not ok(hi)``, where ``ok(t)`` is

    ``count(key >= t) >= target`` (MASS False) or
    ``sum(exp(x - row_max) for key > t and key >= floor_key) >= target`` (MASS True).
    """
    j = tl.arange(0, FANOUT)
    while hi - lo > 1:
        pivots = lo + ((hi - lo) * j) // FANOUT  # pivot 0 is lo itself, already known ok
        total = tl.zeros([FANOUT], dtype=tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf"))
            key = _ordered_key(x).to(tl.int64)
            valid = cols < vocab
            if MASS:
                w = tl.where(valid & (key >= floor_key), tl.exp(x - row_max), 0.0)
                total += tl.sum(tl.where(key[:, None] > pivots[None, :], w[:, None], 0.0), axis=0)
            else:
                total += tl.sum((valid[:, None] & (key[:, None] >= pivots[None, :])).to(tl.float32), axis=0)
        ok = total >= target
        lo_new = tl.max(tl.where(ok, pivots, lo), axis=0)
        hi = tl.min(tl.where(ok, hi, pivots), axis=0)
        lo = lo_new
    return lo, hi


@triton.jit
def _top_k_top_p_min_p_kernel(
    logits_ptr, out_ptr, top_k_ptr, top_p_ptr, min_p_ptr, vocab, stride_l, stride_o,
    BLOCK: tl.constexpr, FANOUT: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_l
    k = tl.load(top_k_ptr + row).to(tl.int64)
    top_p = tl.load(top_p_ptr + row)
    min_p = tl.load(min_p_ptr + row)

    row_max = tl.full([], float("-inf"), dtype=tl.float32)
    row_min = tl.full([], float("inf"), dtype=tl.float32)
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf"))
        row_max = tl.maximum(row_max, tl.max(x, axis=0))
        row_min = tl.minimum(row_min, tl.min(tl.where(cols < vocab, x, float("inf")), axis=0))
    max_key = _ordered_key(row_max).to(tl.int64)

    # top-k: the k-th largest key (largest t with count(key >= t) >= k).
    cut_key = _ordered_key(row_min).to(tl.int64)
    if (k > 0) & (k < vocab):
        cut_key, _ = _search(row_ptr, vocab, cut_key, max_key + 1, cut_key, row_max, k.to(tl.float32),
                             False, BLOCK, FANOUT)  # fmt: skip

    # top-p over the top-k survivors: smallest t whose mass strictly above is < top_p * Z.
    if top_p < 1.0:
        z = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf"))
            z += tl.where(_ordered_key(x).to(tl.int64) >= cut_key, tl.exp(x - row_max), 0.0)
        _, cut_key = _search(row_ptr, vocab, cut_key - 1, max_key, cut_key, row_max, top_p * tl.sum(z, axis=0),
                             True, BLOCK, FANOUT)  # fmt: skip

    min_p_cut = tl.where(min_p > 0.0, row_max + tl.log(tl.maximum(min_p, 1e-30)), float("-inf"))
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf"))
        keep = (_ordered_key(x).to(tl.int64) >= cut_key) & (x >= min_p_cut)
        tl.store(out_ptr + row * stride_o + cols, tl.where(keep, x, float("-inf")), mask=cols < vocab)


def top_k_top_p_min_p(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """Filtered copy of fp32 ``logits`` ``[B, V]`` (see ``KernelBackend.top_k_top_p_min_p``)."""
    logits = logits.float()
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    num_rows, vocab = logits.shape
    if num_rows == 0:
        return out
    _top_k_top_p_min_p_kernel[(num_rows,)](
        logits, out, top_k.contiguous(), top_p.float().contiguous(), min_p.float().contiguous(),
        vocab, logits.stride(0), out.stride(0),
        BLOCK=min(1024, triton.next_power_of_2(vocab)), FANOUT=_FANOUT, num_warps=8,
    )  # fmt: skip
    return out
