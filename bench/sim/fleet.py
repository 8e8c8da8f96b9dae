"""SIMULATOR: a fleet of simulated engines behind the router's REAL picking code, in virtual time.

The router side is production code: ``EndpointSet`` (breakers, scraped metrics with
staleness, in-flight counts), the prefix indexes, and a ``PickRunner`` built by the
plugin registry from a ``PickingConfig``. Only the engines and the clock are simulated.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.sim.cache import BlockCache
from bench.sim.engine import EngineSpec, SimEngine, SimRequest
from bench.sim.workload import ChatWorkload, Conversation, ConversationFactory
from shoal.engine.block_hash import prefix_block_hashes
from shoal.router.config import CircuitBreakerConfig, PickingConfig
from shoal.router.endpoints import EndpointSet
from shoal.router.picking.prefix_index import PrecisePrefixIndex
from shoal.router.picking.registry import PluginContext, build_runner, make_prefix_index
from shoal.router.picking.types import PickRequest


@dataclass
class RunResult:
    policy: str
    engines: int
    rate: float
    requests: list[SimRequest] = field(default_factory=list)
    duration_s: float = 0.0
    warmup_s: float = 0.0
    busy_fraction: float = 0.0
    picks_per_engine: list[int] = field(default_factory=list)
    """Requests sent to each engine after warm-up."""
    queue_samples: list[list[float]] = field(default_factory=list)
    """Each engine's load (running + waiting) at every scrape after warm-up."""

    def measured(self) -> list[SimRequest]:
        return [r for r in self.requests if r.arrival >= self.warmup_s and r.first_token_at is not None]


@dataclass(frozen=True)
class FleetParams:
    engines: int
    rate: float
    """New conversations per second."""
    duration_s: float = 120.0
    warmup_s: float = 30.0
    scrape_interval_s: float = 0.25
    digest_interval_s: float = 1.0
    seed: int = 1
    spec: EngineSpec = field(default_factory=EngineSpec)
    workload: ChatWorkload = field(default_factory=ChatWorkload)


class Fleet:
    """Discrete-event simulation: arrivals, engine steps, metric scrapes, digest polls."""

    def __init__(self, params: FleetParams, picking: PickingConfig, policy: str) -> None:
        self.p = params
        self.policy = policy
        self.now = 0.0
        clock: Callable[[], float] = lambda: self.now  # noqa: E731
        self.engines = {f"http://sim-{i}": SimEngine(f"http://sim-{i}", params.spec) for i in range(params.engines)}
        self.endpoints = EndpointSet("sim", CircuitBreakerConfig(), stale_after_s=3.0, clock=clock)
        self.endpoints.set_urls(self.engines)
        self.index = make_prefix_index(picking.prefix)
        if isinstance(self.index, PrecisePrefixIndex):
            self.index = PrecisePrefixIndex(clock=clock)
        self.runner = build_runner(picking, PluginContext("sim", self.index))
        self.factory = ConversationFactory(params.workload, params.seed)
        self.rng = random.Random(params.seed + 99)
        self._events: list[tuple[float, int, str, object]] = []
        self._seq = itertools.count()
        self._rid = itertools.count()
        self.result = RunResult(policy, params.engines, params.rate, warmup_s=params.warmup_s,
                                picks_per_engine=[0] * params.engines)
        self._index_of = {url: i for i, url in enumerate(self.engines)}
        self._owner: dict[int, str] = {}
        self._conv_of: dict[int, Conversation] = {}

    def _push(self, at: float, kind: str, payload: object = None) -> None:
        heapq.heappush(self._events, (at, next(self._seq), kind, payload))

    async def run(self) -> RunResult:
        p = self.p
        t = 0.0
        while True:
            t += self.rng.expovariate(p.rate)
            if t >= p.duration_s:
                break
            self._push(t, "arrive", self.factory.new())
        self._push(0.0, "scrape")
        self._push(0.0, "digest")
        while self._events:
            at, _, kind, payload = heapq.heappop(self._events)
            if at > p.duration_s and kind in ("scrape", "digest"):
                continue
            self.now = at
            if kind == "arrive":
                assert isinstance(payload, Conversation)
                await self._arrive(payload)
            elif kind == "step":
                assert isinstance(payload, SimEngine)
                self._step_done(payload)
            elif kind == "scrape":
                for url, eng in self.engines.items():
                    state = self.endpoints.get(url)
                    assert state is not None
                    state.set_metrics(eng.metrics(), at)
                if at >= p.warmup_s:
                    self.result.queue_samples.append([sum(e.metrics()[:2]) for e in self.engines.values()])
                self._push(at + p.scrape_interval_s, "scrape")
            elif kind == "digest":
                if isinstance(self.index, PrecisePrefixIndex):
                    for url, eng in self.engines.items():
                        self.index.update_digest(url, eng.digest(), at)
                self._push(at + p.digest_interval_s, "digest")
        end = max((r.finished_at or 0.0) for r in self.result.requests) if self.result.requests else p.duration_s
        self.result.duration_s = end
        busy = sum(e.busy_time for e in self.engines.values())
        self.result.busy_fraction = busy / (end * len(self.engines)) if end else 0.0
        return self.result

    async def _arrive(self, conv: Conversation) -> None:
        w = self.p.workload
        del w
        prompt = conv.prompt()
        reply = conv.reply()
        bs = self.p.spec.block_size
        prompt_hashes = prefix_block_hashes(prompt, bs)
        full_hashes = prefix_block_hashes(prompt + reply, bs)
        req = SimRequest(next(self._rid), self.now, len(prompt), len(reply), prompt_hashes, full_hashes)
        pick_req = PickRequest(
            request_id=str(req.rid), model="sim", pool="sim", block_hashes=tuple(prompt_hashes),
            prompt_tokens=len(prompt), content_key=f"{conv.cid}-{conv.turn}",
        )
        result = await self.runner.pick(pick_req, self.endpoints.candidates())
        url = result.chosen.url
        if self.now >= self.p.warmup_s:
            self.result.picks_per_engine[self._index_of[url]] += 1
        state = self.endpoints.get(url)
        assert state is not None
        state.inflight += 1
        state.sent_since_scrape += 1
        self._owner[req.rid] = url
        self._conv_of[req.rid] = conv
        self.result.requests.append(req)
        engine = self.engines[url]
        engine.add(req)
        if engine.busy_until is None:
            self._kick(engine)

    def _kick(self, engine: SimEngine) -> None:
        end = engine.start_step(self.now)
        if end is not None:
            self._push(end, "step", engine)

    def _step_done(self, engine: SimEngine) -> None:
        _, done = engine.finish_step(self.now)
        for req in done:
            state = self.endpoints.get(self._owner.pop(req.rid))
            if state is not None:
                state.inflight -= 1
            conv = self._conv_of.pop(req.rid)
            conv.turn += 1
            if conv.turn < len(conv.users):
                self._push(self.now + self.factory.think(), "arrive", conv)
        self._kick(engine)


def oracle_hit_rate(requests: list[SimRequest], capacity_blocks: int, block_size: int, warmup_s: float) -> float:
    """Hit rate of one engine with the whole fleet's cache, seeing every request in arrival order."""
    cache = BlockCache(capacity_blocks)
    hit_tokens = total = 0
    for req in sorted(requests, key=lambda r: r.arrival):
        hits = cache.match(req.prompt_hashes)
        if hits * block_size >= req.prompt_len:
            hits -= 1
        if req.arrival >= warmup_s:
            hit_tokens += hits * block_size
            total += req.prompt_len
        cache.pin(req.prompt_hashes[:hits])
        new = req.full_hashes[hits:]
        if not cache.allocate(len(new)):
            cache.release(req.prompt_hashes[:hits], 0)
            continue
        for h in new:
            cache.register(h)
        cache.release(req.full_hashes[: hits + len(new)], 0)
    return hit_tokens / total if total else 0.0


def simulate(params: FleetParams, picking: PickingConfig, policy: str) -> RunResult:
    return asyncio.run(Fleet(params, picking, policy).run())
