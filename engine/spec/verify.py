"""Accepting drafted tokens from the verifying forward pass, losslessly.

Greedy: walk the tree from the root, following the child equal to the argmax, and add the
argmax where the walk stops. Sampling: standard speculative sampling with a deterministic
drafter (the draft distribution is a point mass), generalised to siblings: a child ``t`` is
accepted with probability ``p(t)``; if rejected, ``t`` is removed from ``p`` and ``p`` is
renormalised before the next sibling is tried; when every child is rejected, the emitted token
is drawn from what is left. Each emitted token is then distributed exactly as ``p``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.engine.kernels.backend import KernelBackend
from shoal.engine.sampler import SampleResult
from shoal.engine.sampling_params import SamplingParams
from shoal.engine.spec.token_tree import ROOT, DraftTree


@dataclass(frozen=True)
class Verified:
    """The tokens one drafting sequence emits this step."""

    results: list[SampleResult]
    """Accepted draft tokens, then the token the model adds."""
    path: list[int]
    """Tree nodes accepted, root side first (``len(path) == len(results) - 1``)."""


def verify(
    logits: torch.Tensor,
    tree: DraftTree,
    params: SamplingParams,
    generator: torch.Generator,
    ops: KernelBackend,
) -> Verified:
    """``logits`` ``[1 + m, V]``: row 0 follows the sequence's last token, row ``1 + j`` follows node ``j``."""
    logits = logits.float()
    if params.greedy:
        probs = None
        choice = logits.argmax(dim=-1).tolist()
    else:
        n = logits.shape[0]
        dev = logits.device
        filtered = ops.top_k_top_p_min_p(
            logits / params.temperature,
            torch.full((n,), params.top_k, dtype=torch.long, device=dev),
            torch.full((n,), params.top_p, device=dev),
            torch.full((n,), params.min_p, device=dev),
        )
        probs = torch.softmax(filtered, dim=-1)
    tokens: list[int] = []
    path: list[int] = []
    node = ROOT
    while True:
        row = 0 if node == ROOT else node + 1
        kids = tree.children(node)
        if probs is None:
            target = choice[row]
            nxt = next((k for k in kids if tree.tokens[k] == target), None)
        else:
            nxt, target = _speculative_sample(probs[row], [tree.tokens[k] for k in kids], kids, generator)
        tokens.append(target)
        if nxt is None:
            break
        path.append(nxt)
        node = nxt
    logprobs = _logprobs(logits, [0] + [n + 1 for n in path], tokens, params.logprobs)
    return Verified([SampleResult(t, lp) for t, lp in zip(tokens, logprobs, strict=True)], path)


def _speculative_sample(
    p: torch.Tensor, child_tokens: list[int], kids: list[int], generator: torch.Generator
) -> tuple[int | None, int]:
    """(accepted child or None, emitted token) for one tree level."""
    p = p.clone()
    for kid, token in zip(kids, child_tokens, strict=True):
        total = float(p.sum())
        if total <= 0.0:
            break
        u = float(torch.rand((), generator=generator, device=p.device))
        if u * total < float(p[token]):
            return kid, token
        p[token] = 0.0
    if float(p.sum()) <= 0.0:  # every token with mass was drafted and rejected: cannot happen with exact p
        raise RuntimeError("speculative sampling exhausted the distribution")
    return None, int(torch.multinomial(p, 1, generator=generator))


def _logprobs(
    logits: torch.Tensor, rows: list[int], tokens: list[int], k: int | None
) -> list[dict[int, float] | None]:
    if k is None:
        return [None] * len(tokens)
    logprobs = torch.log_softmax(logits[rows], dim=-1)
    out: list[dict[int, float] | None] = []
    for i, token in enumerate(tokens):
        entry: dict[int, float] = {}
        if k > 0:
            values, ids = logprobs[i].topk(k)
            entry.update(zip(ids.tolist(), values.tolist(), strict=True))
        entry[token] = float(logprobs[i, token])
        out.append(entry)
    return out


def relocate_accepted_kv(
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    ops: KernelBackend,
    block_table: list[int],
    block_size: int,
    first_draft_pos: int,
    path: list[int],
) -> None:
    """Move the accepted nodes' KV to the cache positions right after the sequence.

    Node ``j`` was written at ``first_draft_pos + j``; the ``i``-th accepted node belongs at
    ``first_draft_pos + i``. A path down the first branch is already in place.
    """
    moves = [(first_draft_pos + node, first_draft_pos + i) for i, node in enumerate(path) if node != i]
    if not moves:
        return

    def slot(pos: int) -> int:
        return block_table[pos // block_size] * block_size + pos % block_size

    device = kv_caches[0][0].device
    src = torch.tensor([slot(s) for s, _ in moves], dtype=torch.long, device=device)
    dst = torch.tensor([slot(d) for _, d in moves], dtype=torch.long, device=device)
    for k_cache, v_cache in kv_caches:
        keys = k_cache.flatten(0, 1)[src]
        values = v_cache.flatten(0, 1)[src]
        ops.store_kv(keys, values, k_cache, v_cache, dst)
