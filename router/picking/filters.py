"""Filters: healthy, serves-model, not-saturated."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from shoal.router.picking.params import NoParams, Params
from shoal.router.picking.plugin import Filter
from shoal.router.picking.types import Candidate, PickRequest


class HealthyFilter(Filter):
    """Drops endpoints the circuit breaker has ejected."""

    type_name = "healthy"
    Params = NoParams

    def __init__(self, params: NoParams) -> None:
        del params

    async def filter(self, req: PickRequest, endpoints: Sequence[Candidate]) -> list[Candidate]:
        return [c for c in endpoints if c.healthy]


class ServesModelFilter(Filter):
    """Keeps endpoints whose ``/v1/models`` lists the requested model (unknown lists pass)."""

    type_name = "serves-model"
    Params = NoParams

    def __init__(self, params: NoParams) -> None:
        del params

    async def filter(self, req: PickRequest, endpoints: Sequence[Candidate]) -> list[Candidate]:
        return [c for c in endpoints if c.models is None or req.model in c.models]


class NotSaturatedParams(Params):
    max_waiting: float = Field(default=32, ge=0)
    """Engine queue length (``vllm:num_requests_waiting`` + sent since the scrape) at which it is full."""
    max_kv_usage: float = Field(default=0.98, gt=0, le=1)
    """KV-cache usage fraction at which it is full."""
    strict: bool = False
    """True: reject (503) when every endpoint is saturated; False: keep them all and queue."""


class NotSaturatedFilter(Filter):
    """Drops endpoints whose queue or KV cache is full. Stale metrics count as not saturated."""

    type_name = "not-saturated"
    Params = NotSaturatedParams

    def __init__(self, params: NotSaturatedParams) -> None:
        self._p = params
        self.strict = params.strict

    async def filter(self, req: PickRequest, endpoints: Sequence[Candidate]) -> list[Candidate]:
        out: list[Candidate] = []
        for c in endpoints:
            m = c.metrics
            if m is None or (
                m.waiting + c.sent_since_scrape < self._p.max_waiting and m.kv_usage < self._p.max_kv_usage
            ):
                out.append(c)
        return out
