"""Runs one pick: filters, then clamped and weighted scorers, then the picker; times each plugin."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from shoal.router.picking.plugin import Filter, Picker, Scorer
from shoal.router.picking.types import Candidate, EndpointId, PickRequest, Scored


class NoEndpointError(Exception):
    """No candidate survived the filters (or the pool has no endpoints)."""

    def __init__(self, pool: str, reason: str) -> None:
        super().__init__(f"no endpoint can serve pool {pool!r}: {reason}")
        self.pool = pool
        self.reason = reason


@dataclass(frozen=True)
class WeightedScorer:
    scorer: Scorer
    weight: float


@dataclass(frozen=True)
class PickResult:
    """The outcome of one pick, for the proxy, metrics and tests."""

    chosen: Candidate
    totals: dict[EndpointId, float]
    """Weighted total per surviving candidate."""
    per_scorer: dict[str, dict[EndpointId, float]]
    """Clamped (unweighted) score per scorer per candidate."""
    tie: bool
    """More than one candidate shared the best total (the picker broke the tie)."""
    timings_s: dict[str, float]
    """Seconds per plugin, keyed ``kind:name``."""


class PickObserver(Protocol):
    """Receives every pick (the metrics module implements it)."""

    def observe_pick(self, pool: str, result: PickResult) -> None: ...


def _clamp(value: float) -> float:
    if value != value or value <= 0.0:  # NaN or negative
        return 0.0
    return 1.0 if value >= 1.0 or math.isinf(value) else float(value)


class PickRunner:
    """Filters -> scorers -> picker for one pool, built once and reused for every request."""

    def __init__(
        self,
        pool: str,
        filters: Sequence[Filter],
        scorers: Sequence[WeightedScorer],
        picker: Picker,
        observer: PickObserver | None = None,
        tie_epsilon: float = 1e-6,
    ) -> None:
        self.pool = pool
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        # Labels for metrics and results; a scorer type configured twice gets "#2", "#3"...
        self._labels: list[str] = []
        for ws in self.scorers:
            label, n = ws.scorer.name, 2
            while label in self._labels:
                label, n = f"{ws.scorer.name}#{n}", n + 1
            self._labels.append(label)
        self.picker = picker
        self.observer = observer
        self._eps = tie_epsilon

    async def pick(self, req: PickRequest, endpoints: Sequence[Candidate]) -> PickResult:
        """Choose an endpoint for ``req``; raises NoEndpointError when none can serve it."""
        clock = time.perf_counter
        timings: dict[str, float] = {}
        if not endpoints:
            raise NoEndpointError(self.pool, "the pool has no endpoints")
        # A stable order, so that every replica's plugins see the same sequence.
        candidates = sorted(endpoints, key=lambda c: c.url)
        for flt in self.filters:
            t0 = clock()
            kept = await flt.filter(req, candidates)
            timings["filter:" + flt.name] = clock() - t0
            if not kept:
                if flt.strict:
                    raise NoEndpointError(self.pool, f"filter {flt.name!r} removed every endpoint")
                continue
            candidates = kept

        totals = dict.fromkeys((c.url for c in candidates), 0.0)
        per_scorer: dict[str, dict[EndpointId, float]] = {}
        for ws, label in zip(self.scorers, self._labels, strict=True):
            t0 = clock()
            raw = await ws.scorer.score(req, candidates)
            timings["scorer:" + label] = clock() - t0
            clamped = {url: _clamp(raw.get(url, 0.0)) for url in totals}
            per_scorer[label] = clamped
            if ws.weight:
                for url, value in clamped.items():
                    totals[url] += ws.weight * value

        scored = [Scored(c, totals[c.url]) for c in candidates]
        best = max(totals.values())
        tie = sum(1 for v in totals.values() if v >= best - self._eps) > 1
        t0 = clock()
        chosen = await self.picker.pick(req, scored)
        timings["picker:" + self.picker.name] = clock() - t0

        for plugin in (*self.filters, *(ws.scorer for ws in self.scorers), self.picker):
            await plugin.on_picked(req, chosen)
        result = PickResult(chosen, totals, per_scorer, tie, timings)
        if self.observer is not None:
            self.observer.observe_pick(self.pool, result)
        return result
