"""Affinity scorers: prefix-affinity (KV cache reuse) and session-affinity (programs, sessions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from shoal.router.picking.hashing import hrw_choose
from shoal.router.picking.params import NoParams, Params
from shoal.router.picking.plugin import Scorer
from shoal.router.picking.prefix_index import PrefixIndex
from shoal.router.picking.types import Candidate, EndpointId, PickRequest


class PrefixAffinityScorer(Scorer):
    """Fraction of the prompt's full blocks already cached on each endpoint.

    The index is approximate (what this router sent where) or precise (the engines'
    digests), chosen by ``picking.prefix.mode``; both key on the engine's block hashes.
    """

    type_name = "prefix-affinity"
    Params = NoParams

    def __init__(self, params: NoParams, index: PrefixIndex) -> None:
        del params
        self._index = index

    async def score(self, req: PickRequest, endpoints: Sequence[Candidate]) -> Mapping[EndpointId, float]:
        hashes = req.block_hashes
        if not hashes:
            return {}
        total = len(hashes)
        return {c.url: self._index.matched(c.url, hashes) / total for c in endpoints}

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
