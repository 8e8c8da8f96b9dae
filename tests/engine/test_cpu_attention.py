"""The C++ CPU paged-attention kernel against the torch path (its reference), and its dispatch."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import pytest
import torch

from shoal.engine.kernels.cpu import attention
from shoal.engine.kernels.cpu.build import KernelUnavailable, cpu_supports_kernels
from shoal.engine.kernels.torch_backend import TorchBackend

pytestmark = pytest.mark.skipif(not cpu_supports_kernels(), reason="the CPU kernels need AVX2 + FMA")

REFERENCE = TorchBackend(cpu_attention_kernel=False)
UNUSED_TABLE_ENTRY = 10**6  # a block id no cache has: the kernel must never read it


@pytest.fixture
def two_threads() -> Iterator[None]:
    """Large calls split work (and single long contexts) over threads; make sure there are two."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _problem(
    q_lens: list[int],
    context_lens: list[int],
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    block_size: int,
    head_major: bool = True,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Random caches, shuffled block tables with spare unused entries, queries at the sequences' ends."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(blocks_per_seq) + 3
    if head_major:
        caches = [REFERENCE.allocate_kv_cache(num_blocks, block_size, kv_heads, head_dim, torch.float32, "cpu")]
        caches.append(REFERENCE.allocate_kv_cache(num_blocks, block_size, kv_heads, head_dim, torch.float32, "cpu"))
    else:
        caches = [torch.zeros(num_blocks, block_size, kv_heads, head_dim) for _ in range(2)]
    for cache in caches:
        cache.copy_(torch.randn(cache.shape, generator=gen))
    order = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.full((len(context_lens), max(blocks_per_seq) + 2), UNUSED_TABLE_ENTRY, dtype=torch.int32)
    for s, count in enumerate(blocks_per_seq):
        tables[s, :count] = torch.tensor([order.pop() for _ in range(count)], dtype=torch.int32)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(int(cu[-1]), q_heads, head_dim, generator=gen)
    return q, caches[0], caches[1], tables, cu, torch.tensor(context_lens, dtype=torch.int32)


def _compare(q_lens: list[int], context_lens: list[int], q_heads: int, kv_heads: int, head_dim: int = 64,
             block_size: int = 16, head_major: bool = True) -> None:  # fmt: skip
    q, k, v, tables, cu, ctx = _problem(q_lens, context_lens, q_heads, kv_heads, head_dim, block_size, head_major)
    scale = head_dim**-0.5
    expected = REFERENCE.paged_attention(q, k, v, tables, cu, ctx, scale, max(q_lens), max(context_lens))
    got = attention.cpu_paged_attention(q, k, v, tables, cu, ctx, scale)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 2, 15, 16, 17, 31, 32, 33, 100, 257, 520])
@pytest.mark.parametrize("heads", [(9, 3), (4, 4), (8, 1)])
def test_decode_matches_reference(length: int, heads: tuple[int, int]) -> None:
    _compare([1], [length], *heads)


@pytest.mark.parametrize("batch", [2, 5, 64])
def test_decode_batches_of_mixed_lengths(batch: int) -> None:
    lengths = [1 + (37 * i) % 300 for i in range(batch)]
    _compare([1] * batch, lengths, 9, 3)


def test_long_decodes_split_over_threads(two_threads: None) -> None:
    """One or two long contexts: enough work to split each context over the threads and merge."""
    _compare([1], [2100], 9, 3)
    _compare([1, 1], [1700, 2400], 9, 3)
    _compare([1], [3000], 8, 1, head_dim=128)


@pytest.mark.parametrize("head_major", [True, False])
def test_prefill_chunks_and_decodes_in_one_call(head_major: bool) -> None:
    """A whole prompt, a chunk after a cached prefix, and decodes, packed back to back."""
    _compare([7, 1, 40, 1, 3], [7, 30, 90, 5, 3], 9, 3, head_major=head_major)
    _compare([33, 2], [100, 2], 6, 2, head_dim=8, block_size=4, head_major=head_major)


def test_large_prefill_batch(two_threads: None) -> None:
    _compare([200, 150, 1, 90], [200, 300, 60, 90], 9, 3)


def test_garbage_outside_the_context_is_never_read() -> None:
    """Unused slots of a sequence's last block (stale or NaN) and unused table entries do not matter."""
    q, k, v, tables, cu, ctx = _problem([1, 3], [21, 10], 9, 3, 64, 16)
    scale = 0.125
    expected = attention.cpu_paged_attention(q, k, v, tables, cu, ctx, scale)
    for s, length in enumerate(ctx.tolist()):
        last = int(tables[s, (length - 1) // 16])
        k[last, length % 16 :] = float("nan")
        v[last, length % 16 :] = float("nan")
    got = attention.cpu_paged_attention(q, k, v, tables, cu, ctx, scale)
    assert torch.equal(got, expected)


def test_torch_backend_dispatches_fp32_cpu_to_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    kernel = attention.cpu_paged_attention

    def counting(*args: object) -> torch.Tensor:
        calls.append(1)
        return kernel(*args)  # type: ignore[arg-type]

    monkeypatch.setattr("shoal.engine.kernels.torch_backend.cpu_paged_attention", counting)
    q, k, v, tables, cu, ctx = _problem([4, 1], [20, 9], 9, 3, 64, 16)
    got = TorchBackend().paged_attention(q, k, v, tables, cu, ctx, 0.125, 4, 20)
    assert calls == [1]
    torch.testing.assert_close(got, REFERENCE.paged_attention(q, k, v, tables, cu, ctx, 0.125, 4, 20))
    # other dtypes stay on the torch path
    q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
    assert not attention.kernel_fits(q16, k16, v16)
    got16 = TorchBackend().paged_attention(q16, k16, v16, tables, cu, ctx, 0.125, 4, 20)
    assert calls == [1]
    assert torch.equal(got16, REFERENCE.paged_attention(q16, k16, v16, tables, cu, ctx, 0.125, 4, 20))


def test_unbuildable_kernel_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> None:
        raise KernelUnavailable("no compiler")

    attention.attention_kernel_available.cache_clear()
    monkeypatch.setattr(attention, "attention_kernels", broken)
    try:
        with caplog.at_level(logging.WARNING):
            q, k, v, tables, cu, ctx = _problem([1], [40], 9, 3, 64, 16)
            got = TorchBackend().paged_attention(q, k, v, tables, cu, ctx, 0.125, 1, 40)
        assert "paged attention uses the torch path on CPU: no compiler" in caplog.text
        assert torch.equal(got, REFERENCE.paged_attention(q, k, v, tables, cu, ctx, 0.125, 1, 40))
    finally:
        attention.attention_kernel_available.cache_clear()


def test_scale_is_applied() -> None:
    q, k, v, tables, cu, ctx = _problem([2], [30], 4, 2, 32, 16)
    for scale in (1.0, 1 / math.sqrt(32), 0.01):
        expected = REFERENCE.paged_attention(q, k, v, tables, cu, ctx, scale, 2, 30)
        torch.testing.assert_close(attention.cpu_paged_attention(q, k, v, tables, cu, ctx, scale), expected)
