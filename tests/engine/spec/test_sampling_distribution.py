"""Seeded sampling with speculation keeps the output distribution (a two-sample chi-square test).

A drafter built from the plain engine's own samples proposes, at every step, the two most
frequent next tokens and their two most frequent successors, so verification both accepts
and rejects (and resamples from the residual) at every level.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from shoal.engine import LLM, SamplingParams
from shoal.engine.sequence import Sequence
from shoal.engine.spec import config as spec_config
from shoal.engine.spec.config import SpeculationConfig
from shoal.engine.spec.drafter import Drafter, register_drafter
from shoal.engine.spec.step_cost import StepCostModel
from shoal.engine.spec.token_tree import ROOT, DraftTree, TreeBuilder

NUM_SAMPLES = 600
PARAMS = dict(temperature=0.8, top_k=3, max_tokens=3, ignore_eos=True)
NEXT: dict[tuple[int, ...], Counter[int]] = {}
"""output prefix -> next tokens seen in the plain engine's samples."""


class FrequentNextDrafter(Drafter):
    def __init__(self, config: SpeculationConfig) -> None:
        self.config = config

    def propose(self, seq: Sequence, budget: int, max_depth: int) -> DraftTree | None:
        out = tuple(seq.output_token_ids)
        builder = TreeBuilder(budget, max_depth)
        for token, _ in NEXT.get(out, Counter()).most_common(2):
            child = builder.child(ROOT, token)
            for grand, _ in NEXT.get((*out, token), Counter()).most_common(2):
                if child is not None:
                    builder.child(child, grand)
        return builder.build()


register_drafter("frequent-next", FrequentNextDrafter)


def _samples(llm: LLM, ids: list[int], first_seed: int) -> Counter[tuple[int, ...]]:
    params = [SamplingParams(seed=first_seed + i, **PARAMS) for i in range(NUM_SAMPLES)]  # type: ignore[arg-type]
    results = llm.generate(prompt_token_ids=[ids] * NUM_SAMPLES, params=params)
    return Counter(tuple(r.token_ids) for r in results)


def _chi_square_p(a: Counter[tuple[int, ...]], b: Counter[tuple[int, ...]]) -> float:
    """p-value that two samples of equal size come from one distribution (rare cells pooled)."""
    cells = sorted(set(a) | set(b), key=lambda c: -(a[c] + b[c]))
    pooled: list[tuple[int, int]] = []
    rest = (0, 0)
    for cell in cells:
        if a[cell] + b[cell] >= 10:
            pooled.append((a[cell], b[cell]))
        else:
            rest = (rest[0] + a[cell], rest[1] + b[cell])
    if sum(rest):
        pooled.append(rest)
    stat = sum((x - y) ** 2 / (x + y) for x, y in pooled)
    dof = len(pooled) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(stat / 2)))


@pytest.mark.slow
def test_speculative_sampling_keeps_the_distribution(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec_config, "DRAFTER_NAMES", (*spec_config.DRAFTER_NAMES, "frequent-next"))
    # extra query rows cost nothing here: every draft is verified whole, even in a batch of 600
    monkeypatch.setattr(StepCostModel, "relative", lambda self, rows, extra: 1.0)
    plain = LLM(str(tiny_llama_dir), num_kv_blocks=2048, max_num_seqs=NUM_SAMPLES)
    ids = plain.tokenizer.encode("the quick brown fox")
    reference = _samples(plain, ids, first_seed=0)
    for output, count in reference.items():
        for cut in range(len(output)):
            NEXT.setdefault(output[:cut], Counter())[output[cut]] += count
    spec = LLM(
        str(tiny_llama_dir), num_kv_blocks=2048, max_num_seqs=NUM_SAMPLES,
        speculation=SpeculationConfig(method="frequent-next", max_batch_size=NUM_SAMPLES),
    )  # fmt: skip
    speculative = _samples(spec, ids, first_seed=NUM_SAMPLES)
    again = _samples(plain, ids, first_seed=2 * NUM_SAMPLES)
    stats = spec.engine.speculator.stats  # type: ignore[union-attr]
    assert 0 < stats.num_accepted_tokens < stats.num_draft_tokens, "verification should accept and reject"
    assert len(reference) > 5, "the test needs a spread-out distribution"
    # the plain engine against itself bounds what chance alone does to the statistic
    assert _chi_square_p(reference, again) > 1e-3
    assert _chi_square_p(reference, speculative) > 1e-3
    # and the test can tell: always taking the first drafted branch would skew the counts
    skewed = Counter({out: n for out, n in speculative.items()})
    skewed[max(skewed, key=lambda c: skewed[c])] += NUM_SAMPLES // 5
    assert _chi_square_p(reference, skewed) < 1e-3
