"""Affinity scorers: prefix-affinity (KV cache reuse) and session-affinity (programs, sessions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field

from shoal.router.picking.hashing import hrw_choose
from shoal.router.picking.params import Params
from shoal.router.picking.plugin import Scorer
from shoal.router.picking.prefix_index import PrefixIndex
from shoal.router.picking.types import Candidate, EndpointId, PickRequest


class PrefixAffinityParams(Params):
    load_slack: float | None = Field(default=4.0, gt=0)
    """Headroom damping: each endpoint's cache-match score is multiplied by
    ``(least + load_slack) / (load + load_slack)``, where ``load`` is its queue and ``least`` the
    least loaded candidate's. An engine ``load_slack`` requests busier than an idle one keeps half
    its score, so a hot prefix cannot pile every request onto the engine holding it while others
    sit idle; when every engine is busy the damping is gentler (the cache still counts). Load is
    the scraped queue plus what was sent since the scrape (the router's in-flight count without
    fresh metrics). None: no damping (pure cache affinity)."""


def endpoint_load(c: Candidate) -> float:
    """Requests queued on ``c``: scraped waiting + sent since the scrape, else in flight from here.
    Running requests are left out: with continuous batching they barely delay a new one."""
    if c.metrics is None:
        return float(c.inflight)
    return c.metrics.waiting + c.sent_since_scrape


class PrefixAffinityScorer(Scorer):
    """Fraction of the prompt's full blocks already cached on each endpoint, damped by how much
    busier than the least loaded candidate the endpoint is (see ``load_slack``).

    The index is approximate (what this router sent where) or precise (the engines'
    digests), chosen by ``picking.prefix.mode``; both key on the engine's block hashes.
    """

    type_name = "prefix-affinity"
    Params = PrefixAffinityParams

    def __init__(self, params: PrefixAffinityParams, index: PrefixIndex) -> None:
        self._slack = params.load_slack
        self._index = index

    async def score(self, req: PickRequest, endpoints: Sequence[Candidate]) -> Mapping[EndpointId, float]:
        hashes = req.block_hashes
        if not hashes or not endpoints:
            return {}
        total = len(hashes)
        scores = {c.url: self._index.matched(c.url, hashes) / total for c in endpoints}
        slack = self._slack
        if slack is None:
            return scores
        loads = {c.url: endpoint_load(c) for c in endpoints}
        least = min(loads.values())
        return {url: score * (least + slack) / (loads[url] + slack) for url, score in scores.items()}

    async def on_picked(self, req: PickRequest, chosen: Candidate) -> None:
        if req.block_hashes:
            self._index.record(chosen.url, req.block_hashes)


class SessionAffinityParams(Params):
    key: Literal["auto", "program", "session"] = "auto"
    """Which id to hash: ``auto`` takes the program id, else the session id."""


class SessionAffinityScorer(Scorer):
    """Scores 1 for the endpoint a program/session id hashes to (rendezvous hashing), 0 elsewhere.

    Consistent across router replicas, and when an endpoint leaves only its ids move.
    """

    type_name = "session-affinity"
    Params = SessionAffinityParams

    def __init__(self, params: SessionAffinityParams) -> None:
        self._key = params.key

    async def score(self, req: PickRequest, endpoints: Sequence[Candidate]) -> Mapping[EndpointId, float]:
        if self._key == "program":
            key = req.program_id
        elif self._key == "session":
            key = req.session_id
        else:
            key = req.affinity_key
        if not key or not endpoints:
            return {}
        return {hrw_choose(key, (c.url for c in endpoints)): 1.0}
