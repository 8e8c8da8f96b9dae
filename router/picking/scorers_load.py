"""Load scorers: queue-depth, kv-usage, least-requests.

Engine metrics come from periodic scrapes. A fresh scrape's queue is corrected by the
requests this router sent since (so a burst does not pile onto one endpoint); when the
scrape is stale or missing, scorers fall back to the router's own in-flight counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import Field

from shoal.router.picking.params import NoParams, Params
from shoal.router.picking.plugin import Scorer
from shoal.router.picking.types import Candidate, EndpointId, PickRequest


def _inverse_minmax(values: Mapping[EndpointId, float]) -> dict[EndpointId, float]:
    """1 for the least loaded, 0 for the most, linear between; all equal -> all 1."""
    if not values:
        return {}
    lo, hi = min(values.values()), max(values.values())
    if hi <= lo:
        return dict.fromkeys(values, 1.0)
    span = hi - lo
    return {url: (hi - v) / span for url, v in values.items()}


def queue_estimate(c: Candidate) -> float:
    """Requests queued on ``c``: scraped waiting + sent since the scrape, else router in-flight."""
    if c.metrics is None:
        return float(c.inflight)
    return c.metrics.waiting + c.sent_since_scrape


class QueueDepthScorer(Scorer):
    """Prefers the shortest engine queue (``vllm:num_requests_waiting``)."""

    type_name = "queue-depth"
    Params = NoParams

    def __init__(self, params: NoParams) -> None:
        del params

    async def score(self, req: PickRequest, endpoints: Sequence[Candidate]) -> Mapping[EndpointId, float]:
        return _inverse_minmax({c.url: queue_estimate(c) for c in endpoints})


class KvUsageParams(Params):
    unknown_score: float = Field(default=0.5, ge=0, le=1)
    """Score of an endpoint without fresh metrics."""


class KvUsageScorer(Scorer):
    """Prefers free KV cache: ``1 - vllm:kv_cache_usage_perc``."""

    type_name = "kv-usage"
    Params = KvUsageParams

    def __init__(self, params: KvUsageParams) -> None:
        self._unknown = params.unknown_score

    async def score(self, req: PickRequest, endpoints: Sequence[Candidate]) -> Mapping[EndpointId, float]:
        return {c.url: self._unknown if c.metrics is None else 1.0 - c.metrics.kv_usage for c in endpoints}


class LeastRequestsScorer(Scorer):
    """Prefers the fewest requests open from this router (no engine metrics needed)."""

    type_name = "least-requests"
    Params = NoParams

    def __init__(self, params: NoParams) -> None:
        del params

    async def score(self, req: PickRequest, endpoints: Sequence[Candidate]) -> Mapping[EndpointId, float]:
        return _inverse_minmax({c.url: float(c.inflight) for c in endpoints})
