"""Scale from zero, the router's side: hold requests for a pool with no ready engine, report demand.

A pool whose config has ``coldStart`` (the operator sets it for ModelPools with
``autoscaling.minReplicas: 0``) may have no engine at all. A request for it then waits in a
bounded per-pool hold (no queue order is promised: every held request is released together) until
discovery or a health probe brings an engine in; past the bound, or after the hold timeout, the
router answers 503 with Retry-After instead of hanging.

Whoever scales the pool (the operator in a cluster, the ``shoal up`` supervisor locally) reads
``GET /shoal/demand``: per pool, the requests held, the requests open upstream, the ready
engines and how long the pool has been idle (no request held, open or arriving). The same
numbers are Prometheus gauges on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.responses import JSONResponse

from shoal.router.config_pools import ColdStartConfig
from shoal.router.errors import RouterError

if TYPE_CHECKING:
    from shoal.router.pool import PoolRuntime

DEMAND_PATH = "/shoal/demand"
RETRY_AFTER_S = 5
"""What a request the hold turns away is told to wait before retrying."""


def scaling_up(message: str, code: str) -> RouterError:
    return RouterError(503, message, "service_unavailable", code, headers={"Retry-After": str(RETRY_AFTER_S)})


@dataclass(frozen=True)
class PoolDemand:
    """What one router sees of one pool's demand (the ``/shoal/demand`` entry)."""

    pool: str
    waiting: int
    """Requests held for want of a ready engine."""
    inflight: int
    """Requests open upstream (sent to an engine, not finished)."""
    ready_endpoints: int
    idle_seconds: float
    """Seconds since the pool last had a request arriving, held or open (0 while it has one)."""


class ColdStartGate:
    """One pool's hold: requests wait here while ``ready()`` is false."""

    def __init__(
        self,
        pool: str,
        cfg: ColdStartConfig,
        ready: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.cfg = cfg
        self._ready = ready
        self._clock = clock
        self.waiting = 0
        # Router start counts as activity: a restarted router never reports a long-idle pool at once.
        self._last_active = clock()
        self._changed = asyncio.Event()

    def endpoints_changed(self) -> None:
        """Discovery or a probe changed the endpoints: held requests look again."""
        if self.waiting:
            self._changed.set()
            self._changed = asyncio.Event()

    async def wait_ready(self) -> float:
        """Return once the pool has a ready engine (seconds held); RouterError 503 + Retry-After
        when the hold is full or its timeout passes first."""
        self._last_active = started = self._clock()
        if self._ready():
            return 0.0
        if self.waiting >= self.cfg.max_waiting:
            raise scaling_up(
                f"pool {self.pool!r} is scaling up from zero and already holds {self.waiting} requests; retry later",
                "scaling_up_queue_full",
            )
        self.waiting += 1
        try:
            deadline = started + self.cfg.timeout_s
            while not self._ready():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise scaling_up(
                        f"pool {self.pool!r} has had no ready engine for {self.cfg.timeout_s:g} s; retry later",
                        "scaling_up_timeout",
                    )
                # A periodic look too: readiness can change without a notification (an ejection ends).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, 1.0)):
                        await self._changed.wait()
            return self._clock() - started
        finally:
            self.waiting -= 1
            self._last_active = self._clock()

    def demand(self, inflight: int, ready_endpoints: int) -> PoolDemand:
        now = self._clock()
        if self.waiting or inflight:
            self._last_active = now
        return PoolDemand(self.pool, self.waiting, inflight, ready_endpoints, round(now - self._last_active, 3))


def pool_demand(pool: PoolRuntime) -> PoolDemand | None:
    """The demand of a pool that can be held at zero; None for other pools."""
    if pool.cold_start is None:
        return None
    states = list(pool.endpoints)
    inflight = sum(max(0, s.inflight) for s in states)
    return pool.cold_start.demand(inflight, sum(1 for s in states if s.breaker.available))


def demand_report(pools: Mapping[str, PoolRuntime]) -> dict[str, object]:
    """``GET /shoal/demand``: ``{"pools": [PoolDemand...]}`` for every pool with a cold-start hold."""
    return {"pools": [asdict(d) for d in _demands(pools.values())]}


def register_demand_route(app: FastAPI, pools: Mapping[str, PoolRuntime]) -> None:
    """``GET /shoal/demand`` (no API key, like /metrics: counts only)."""

    @app.get(DEMAND_PATH)
    async def demand() -> JSONResponse:
        return JSONResponse(demand_report(pools))


class DemandCollector(Collector):
    """Prometheus gauges of the same numbers, per pool with a hold."""

    def __init__(self, pools: Mapping[str, PoolRuntime]) -> None:
        self._pools = pools

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily(
            "shoal_router_cold_start_waiting_requests", "Requests held for want of a ready engine.", labels=["pool"]
        )
        idle = GaugeMetricFamily(
            "shoal_router_pool_idle_seconds", "Seconds since the pool last had a request (held, open or arriving).",
            labels=["pool"],
        )
        for d in _demands(self._pools.values()):
            waiting.add_metric([d.pool], d.waiting)
            idle.add_metric([d.pool], d.idle_seconds)
        yield waiting
        yield idle


def _demands(pools: Iterable[PoolRuntime]) -> Iterator[PoolDemand]:
    for pool in pools:
        d = pool_demand(pool)
        if d is not None:
            yield d
