"""One varlen paged-attention kernel for prefill chunks and decodes in the same batch.

Work split: a program owns one KV head and a tile of ``BLOCK_Q`` consecutive query tokens of
one sequence, and puts all query heads of that KV head's GQA group in the rows of its tile
(``BLOCK_M = BLOCK_Q * ROWS_PER_TOKEN`` rows), so each K/V tile read from the cache serves the
whole group with one ``tl.dot``. Keys are gathered position by position through the block
table, which makes every power-of-two block size (1 .. 128 and beyond) the same code path.

The launch grid depends only on tensor shapes and on whether the batch is decode-only, never
on per-batch values such as context lengths, so a decode step can be captured in a CUDA graph:
program ``pid`` finds its sequence by a binary search over ``cu_seqlens_q`` on the device.

Speculative decoding verifies a drafted token tree in the same call: a sequence's last
``draft_lens[b]`` tokens are tree nodes, and query token ``t`` may see a node's slot only if bit
``slot - first_node_slot`` of ``tree_bits[t]`` is set (its ancestors and itself); everything
before the nodes stays causal.

Decode batches too small to fill the GPU split each sequence's keys into ``NUM_SPLITS`` ranges
(flash-decoding); a second kernel merges the partial softmax results.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634


@triton.jit
def _find_sequence(cu_seqlens_ptr, num_seqs, pid, BLOCK_Q: tl.constexpr):
    """Largest b with first_tile(b) <= pid, where first_tile(b) = cu[b] // BLOCK_Q (+ b)."""
    # Tensors from the start: num_seqs == 1 arrives as a compile-time constant (Triton specialises 1).
    lo = pid * 0
    hi = lo + num_seqs
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        first = tl.load(cu_seqlens_ptr + mid) // BLOCK_Q
        if BLOCK_Q > 1:
            first += mid  # each sequence's last tile may be partial: one spare tile per sequence
        go_right = first <= pid
        lo = tl.where(go_right, mid, lo)
        hi = tl.where(go_right, hi, mid)
    return lo


@triton.jit
def _paged_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_out_ptr, part_ml_ptr,
    block_tables_ptr, cu_seqlens_ptr, context_lens_ptr, tree_bits_ptr, draft_lens_ptr,
    scale_log2, num_seqs, num_q_heads, head_dim,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    GROUP: tl.constexpr, ROWS_PER_TOKEN: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, KV_BLOCK_SIZE: tl.constexpr,
    NUM_SPLITS: tl.constexpr, DOT_PRECISION: tl.constexpr, HAS_TREE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    BLOCK_M: tl.constexpr = BLOCK_Q * ROWS_PER_TOKEN

    seq = _find_sequence(cu_seqlens_ptr, num_seqs, pid, BLOCK_Q)
    q_start = tl.load(cu_seqlens_ptr + seq)
    q_len = tl.load(cu_seqlens_ptr + seq + 1) - q_start
    first_tile = q_start // BLOCK_Q
    if BLOCK_Q > 1:
        first_tile += seq
    tile_q0 = (pid - first_tile) * BLOCK_Q  # first query (index within the sequence) of this tile
    context_len = tl.load(context_lens_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    q_idx = tile_q0 + rows // ROWS_PER_TOKEN
    group_idx = rows % ROWS_PER_TOKEN
    row_valid = (q_idx < q_len) & (group_idx < GROUP)
    head = kv_head * GROUP + group_idx
    q_pos = context_len - q_len + q_idx  # absolute position: attends to keys 0..q_pos
    token = (q_start + q_idx).to(tl.int64)
    dims = tl.arange(0, BLOCK_D)
    dim_valid = dims < head_dim

    if HAS_TREE:
        first_node = context_len - tl.load(draft_lens_ptr + seq)
        tree_bits = tl.load(tree_bits_ptr + token, mask=row_valid, other=0)

    q = tl.load(
        q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
        mask=row_valid[:, None] & dim_valid[None, :],
        other=0.0,
    )

    # Keys this tile needs: up to the last query's position (0 for a spare tile).
    kv_end = tl.minimum(context_len, context_len - q_len + tile_q0 + BLOCK_Q)
    kv_end = tl.where(tile_q0 < q_len, kv_end, 0)
    num_tiles = tl.cdiv(kv_end, BLOCK_N)
    tiles_per_split = tl.cdiv(num_tiles, NUM_SPLITS)
    tile_lo = split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, num_tiles)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    for tile in range(tile_lo, tile_hi):
        pos = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        pos_valid = pos < kv_end
        block = tl.load(table + pos // KV_BLOCK_SIZE, mask=pos_valid, other=0).to(tl.int64)
        offset = pos % KV_BLOCK_SIZE
        kv_mask = pos_valid[:, None] & dim_valid[None, :]
        k = tl.load(
            k_cache_ptr + block[:, None] * stride_kb + offset[:, None] * stride_ks + kv_head * stride_kh + dims[None, :],
            mask=kv_mask,
            other=0.0,
        )
        v = tl.load(
            v_cache_ptr + block[:, None] * stride_vb + offset[:, None] * stride_vs + kv_head * stride_vh + dims[None, :],
            mask=kv_mask,
            other=0.0,
        )
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * scale_log2
        allowed = (pos[None, :] <= q_pos[:, None]) & pos_valid[None, :]
        if HAS_TREE:
            node = tl.maximum(pos - first_node, 0).to(tl.int64)
            seen = ((tree_bits[:, None] >> node[None, :]) & 1) != 0
            allowed = allowed & ((pos < first_node)[None, :] | seen)
        s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION)
        m_i = m_new

    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(
            out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_valid[:, None] & dim_valid[None, :],
        )
    else:
        # Partials, unnormalised: part_out [T, Hq, S, BLOCK_D], part_ml [T, Hq, S, 2] = (max, sum).
        part_row = (token * num_q_heads + head) * NUM_SPLITS + split
        tl.store(part_out_ptr + part_row[:, None] * BLOCK_D + dims[None, :], acc, mask=row_valid[:, None])
        tl.store(part_ml_ptr + part_row * 2, m_i, mask=row_valid)
        tl.store(part_ml_ptr + part_row * 2 + 1, l_i, mask=row_valid)


@triton.jit
def _merge_splits_kernel(
    part_out_ptr, part_ml_ptr, out_ptr, num_q_heads, head_dim, stride_ot, stride_oh,
    NUM_SPLITS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, BLOCK_D)
    base = (token * num_q_heads + head) * NUM_SPLITS
    m = tl.load(part_ml_ptr + (base + splits) * 2)
    l_part = tl.load(part_ml_ptr + (base + splits) * 2 + 1)
    m_max = tl.max(m, axis=0)
    weight = tl.where(m == float("-inf"), 0.0, tl.exp2(m - m_max))  # empty splits weigh nothing
    acc = tl.load(part_out_ptr + (base + splits)[:, None] * BLOCK_D + dims[None, :])
    out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(l_part * weight, axis=0)
    tl.store(out_ptr + token * stride_ot + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty), mask=dims < head_dim)


def _num_splits(num_seqs: int, num_kv_heads: int, max_q_len: int, device: torch.device) -> int:
    """Key-range splits for small decode batches; depends on shapes only (CUDA-graph safe)."""
    if max_q_len != 1 or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = num_seqs * num_kv_heads
    if programs >= sms:
        return 1
    return min(16, triton.next_power_of_2(math.ceil(2 * sms / programs)))


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    max_q_len: int,
    max_context_len: int,
    num_splits: int | None = None,
    tree_bits: torch.Tensor | None = None,
    draft_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal varlen attention over the paged cache (see ``KernelBackend.paged_attention``).

    ``max_context_len`` is not needed: each program reads its own context length on the device.
    ``num_splits`` overrides the key-range split count (a power of two; tests use it on CPU).
    ``tree_bits`` ``[T]`` int64 and ``draft_lens`` ``[B]`` int32 (both or neither) mask drafted
    tree nodes (see the module docstring); at most 63 nodes per sequence.
    """
    del max_context_len
    if q.stride(-1) != 1:
        q = q.contiguous()
    num_tokens, num_q_heads, head_dim = q.shape
    num_seqs = context_lens.shape[0]
    kv_block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if num_tokens == 0 or num_seqs == 0:
        return out

    group_pad = triton.next_power_of_2(group)
    if max_q_len <= 1:
        block_q = 1
        rows_per_token = max(group_pad, 16)  # tl.dot wants at least 16 rows
    else:
        block_q = max(1, 64 // group_pad)
        rows_per_token = group_pad * max(1, 16 // (block_q * group_pad))
    num_q_tiles = num_tokens if block_q == 1 else num_tokens // block_q + num_seqs
    splits = num_splits if num_splits is not None else _num_splits(num_seqs, num_kv_heads, max_q_len, q.device)
    block_d = max(16, triton.next_power_of_2(head_dim))
    if splits > 1:
        part_out = torch.empty(num_tokens * num_q_heads * splits * block_d, dtype=torch.float32, device=q.device)
        part_ml = torch.empty(num_tokens * num_q_heads * splits * 2, dtype=torch.float32, device=q.device)
    else:
        part_out = part_ml = out  # unused
    _paged_attention_kernel[(num_q_tiles, num_kv_heads, splits)](
        q, k_cache, v_cache, out, part_out, part_ml,
        block_tables, cu_seqlens_q, context_lens,
        tree_bits if tree_bits is not None else context_lens, draft_lens if draft_lens is not None else context_lens,
        scale * _LOG2E, num_seqs, num_q_heads, head_dim,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        GROUP=group, ROWS_PER_TOKEN=rows_per_token, BLOCK_Q=block_q,
        BLOCK_N=64, BLOCK_D=block_d, KV_BLOCK_SIZE=kv_block_size,
        # fp32 stays fp32 (no TF32) so the fp32 path matches the reference; 16-bit dots use the default.
        NUM_SPLITS=splits, DOT_PRECISION="ieee" if q.dtype == torch.float32 else None, HAS_TREE=tree_bits is not None,
        num_warps=4, num_stages=2,
    )  # fmt: skip
    if splits > 1:
        _merge_splits_kernel[(num_tokens, num_q_heads)](
            part_out, part_ml, out, num_q_heads, head_dim, out.stride(0), out.stride(1),
            NUM_SPLITS=splits, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
    return out
