"""Pickers: max-score (consistent tie-break), round-robin, random."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from pydantic import Field

from shoal.router.picking.hashing import hrw_choose
from shoal.router.picking.params import NoParams, Params
from shoal.router.picking.plugin import Picker
from shoal.router.picking.types import Candidate, PickRequest, Scored


class MaxScoreParams(Params):
    tie_epsilon: float = Field(default=1e-6, ge=0)
    """Totals closer than this to the best count as tied."""


class MaxScorePicker(Picker):
    """Highest total score; ties go to the rendezvous-hash winner of the request's tie key,
    so two router replicas with the same view pick the same endpoint."""

    type_name = "max-score"
    Params = MaxScoreParams

    def __init__(self, params: MaxScoreParams) -> None:
        self._eps = params.tie_epsilon

    async def pick(self, req: PickRequest, scored: Sequence[Scored]) -> Candidate:
        best = max(s.score for s in scored)
        tied = [s.candidate for s in scored if s.score >= best - self._eps]
        if len(tied) == 1:
            return tied[0]
        winner = hrw_choose(req.tie_key, (c.url for c in tied))
        return next(c for c in tied if c.url == winner)


class RoundRobinPicker(Picker):
    """Cycles through the candidates, ignoring scores (a baseline)."""

    type_name = "round-robin"
    Params = NoParams

    def __init__(self, params: NoParams) -> None:
        del params
        self._counter = itertools.count()

    async def pick(self, req: PickRequest, scored: Sequence[Scored]) -> Candidate:
        return scored[next(self._counter) % len(scored)].candidate


class RandomParams(Params):
    seed: int | None = None
    """Seed for reproducible runs (benchmarks); None: random."""


class RandomPicker(Picker):
    """Uniformly random, ignoring scores (a baseline)."""

    type_name = "random"
    Params = RandomParams

    def __init__(self, params: RandomParams) -> None:
        self._rng = random.Random(params.seed)

    async def pick(self, req: PickRequest, scored: Sequence[Scored]) -> Candidate:
        return self._rng.choice(list(scored)).candidate
