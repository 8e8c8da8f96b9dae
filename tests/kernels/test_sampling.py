"""Top-k / top-p / min-p filtering: Triton's sort-free search against the sort-based reference.

Exact agreement is expected except at a top-p boundary that lies within float rounding of
the cumulative mass (the backends sum in different orders); such entries are accepted only
when their float64 mass-above is within 1e-5 of top_p.
"""

from __future__ import annotations

import pytest
import torch

from shoal.engine.kernels import KernelBackend

pytestmark = pytest.mark.kernels

NEG_INF = float("-inf")


def case(gen: torch.Generator, rows: int, vocab: int, ties: bool = False) -> torch.Tensor:
    logits = torch.randn(rows, vocab, generator=gen) * 3
    if ties:  # coarse values: many equal logits, ties at every cutoff
        logits = logits.round()
    logits[0, : vocab // 10] = NEG_INF  # a masked part of the vocabulary
    return logits


def check(ref: KernelBackend, tri: KernelBackend, logits: torch.Tensor, top_k: list, top_p: list, min_p: list) -> None:
    args = (torch.tensor(top_k, dtype=torch.int32), torch.tensor(top_p), torch.tensor(min_p))
    expected = ref.top_k_top_p_min_p(logits, *args)
    got = tri.top_k_top_p_min_p(logits, *args)
    assert not got.isnan().any()
    assert torch.equal(got, tri.top_k_top_p_min_p(logits, *args)), "must be deterministic"
    kept = ~expected.isneginf()
    assert torch.equal(got[kept | ~got.isneginf()], logits[kept | ~got.isneginf()]), "kept entries keep their value"
    for row in (kept != ~got.isneginf()).any(dim=1).nonzero().flatten().tolist():
        # Only a top-p boundary within rounding may differ.
        x = logits[row].double()
        k = top_k[row] if 0 < top_k[row] < x.numel() else x.numel()
        survivors = x >= x.sort(descending=True).values[k - 1]
        p = torch.where(survivors, (x - x.max()).exp(), 0.0)
        p = p / p.sum()
        for col in (kept[row] != ~got[row].isneginf()).nonzero().flatten().tolist():
            mass_above = p[x > x[col]].sum().item()
            assert abs(mass_above - top_p[row]) < 1e-5, (row, col, mass_above, top_p[row])


@pytest.mark.parametrize("ties", [False, True])
def test_mixed_rows(ref: KernelBackend, tri: KernelBackend, gen: torch.Generator, poisoned_outputs: None, ties: bool) -> None:
    logits = case(gen, 6, 1500, ties)
    top_p = torch.rand(6, generator=gen).clamp(min=0.05).tolist()
    check(
        ref, tri, logits,
        top_k=[0, 5, 50, 0, 1, 2000],  # off, small, medium, off, greedy-like, larger than the vocab
        top_p=[1.0, 1.0, top_p[2], top_p[3], 0.9, top_p[5]],
        min_p=[0.0, 0.0, 0.0, 0.05, 0.0, 0.2],
    )  # fmt: skip


def test_all_filters_off_is_identity(ref: KernelBackend, tri: KernelBackend, gen: torch.Generator) -> None:
    logits = case(gen, 3, 700)
    check(ref, tri, logits, top_k=[0, 0, 0], top_p=[1.0, 1.0, 1.0], min_p=[0.0, 0.0, 0.0])
    got = tri.top_k_top_p_min_p(logits, torch.zeros(3, dtype=torch.int32), torch.ones(3), torch.zeros(3))
    assert torch.equal(got, logits)


def test_top_k_keeps_exactly_k_without_ties(tri: KernelBackend, gen: torch.Generator) -> None:
    logits = torch.randn(4, 3000, generator=gen)
    got = tri.top_k_top_p_min_p(logits, torch.tensor([1, 7, 100, 2999]), torch.ones(4), torch.zeros(4))
    assert (~got.isneginf()).sum(dim=1).tolist() == [1, 7, 100, 2999]
    assert torch.equal(got.max(dim=1).values, logits.max(dim=1).values)
