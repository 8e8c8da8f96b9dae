"""Logits -> next tokens: penalties, temperature, top-k/top-p/min-p, seeded sampling, logprobs.

Every sampled row draws from its own ``torch.Generator``, so a seeded request gets the
same tokens whatever batch it shares a step with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shoal.engine.kernels.backend import KernelBackend
from shoal.engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class SamplingRow:
    """One row of logits to sample from."""

    params: SamplingParams
    generator: torch.Generator
    token_ids: list[int]
    """All tokens of the sequence so far (repetition penalty looks at prompt + output)."""
    num_prompt_tokens: int
    banned_token_ids: tuple[int, ...] = ()
    """Masked for this step (EOS and stop ids before ``min_tokens``)."""


@dataclass(frozen=True)
class SampleResult:
    token_id: int
    logprobs: dict[int, float] | None


def sample(logits: torch.Tensor, rows: list[SamplingRow], ops: KernelBackend) -> list[SampleResult]:
    """Sample one token per row of ``logits`` ``[N, V]``; stays on the logits' device until the end."""
    logits = logits.float()
    device = logits.device
    raw_logprobs = _raw_logprobs(logits, rows)
    logits = _apply_penalties(logits, rows)
    tokens = logits.argmax(dim=-1)
    random_rows = [i for i, r in enumerate(rows) if not r.params.greedy]
    if random_rows:
        idx = torch.tensor(random_rows, device=device)
        params = [rows[i].params for i in random_rows]
        temperature = torch.tensor([p.temperature for p in params], device=device).unsqueeze(1)
        filtered = ops.top_k_top_p_min_p(
            logits[idx] / temperature,
            torch.tensor([p.top_k for p in params], dtype=torch.long, device=device),
            torch.tensor([p.top_p for p in params], device=device),
            torch.tensor([p.min_p for p in params], device=device),
        )
        probs = torch.softmax(filtered, dim=-1)
        # exponential race == a multinomial draw, with one generator per row (batch-invariant)
        noise = torch.stack(
            [torch.empty_like(probs[j]).exponential_(generator=rows[i].generator) for j, i in enumerate(random_rows)]
        )
        tokens[idx] = (probs / noise).argmax(dim=-1)
    token_list = tokens.tolist()
    results = []
    for i, row in enumerate(rows):
        lp = None
        if raw_logprobs is not None and row.params.logprobs is not None:
            lp = _top_logprobs(raw_logprobs[i], row.params.logprobs, token_list[i])
        results.append(SampleResult(token_list[i], lp))
    return results


def _raw_logprobs(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor | None:
    if not any(r.params.logprobs is not None for r in rows):
        return None
    return torch.log_softmax(logits, dim=-1)


def _top_logprobs(row_logprobs: torch.Tensor, k: int, token_id: int) -> dict[int, float]:
    result: dict[int, float] = {}
    if k > 0:
        values, ids = row_logprobs.topk(k)
        result.update(zip(ids.tolist(), values.tolist(), strict=True))
    result[token_id] = float(row_logprobs[token_id])
    return result


def _apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    cloned = False
    device = logits.device
    for i, row in enumerate(rows):
        p = row.params
        needs = p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        if not needs and not row.banned_token_ids:
            continue
        if not cloned:
            logits = logits.clone()
            cloned = True
        if p.repetition_penalty != 1.0 and row.token_ids:
            seen = torch.tensor(sorted(set(row.token_ids)), dtype=torch.long, device=device)
            vals = logits[i, seen]
            logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        output = row.token_ids[row.num_prompt_tokens :]
        if (p.presence_penalty or p.frequency_penalty) and output:
            counts = torch.bincount(
                torch.tensor(output, dtype=torch.long, device=device), minlength=logits.shape[-1]
            ).float()
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).float()
        if row.banned_token_ids:
            logits[i, list(row.banned_token_ids)] = float("-inf")
    return logits
