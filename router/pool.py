"""One pool at run time: its endpoints, discovery, polling, tokenizer and pick runner."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from shoal.router.cold_start import ColdStartGate
from shoal.router.config import PoolConfig, RouterConfig
from shoal.router.discovery import EndpointSource, make_source
from shoal.router.endpoints import (
    EndpointObserver,
    EndpointSet,
    EndpointState,
    parse_engine_metrics,
    parse_kv_capacity,
)
from shoal.router.picking.prefix_index import PrecisePrefixIndex
from shoal.router.picking.registry import PluginContext, build_runner, make_prefix_index
from shoal.router.picking.runner import PickObserver, PickRunner
from shoal.router.tokenization import DEFAULT_BLOCK_SIZE, PromptHasher

log = logging.getLogger("shoal.router.pool")


class PoolRuntime:
    """Keeps a pool's endpoint view fresh and owns the plugins that pick among them."""

    def __init__(
        self,
        cfg: PoolConfig,
        router_cfg: RouterConfig,
        client: httpx.AsyncClient,
        pick_observer: PickObserver | None = None,
        endpoint_observer: EndpointObserver | None = None,
        source: EndpointSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self._health = router_cfg.health
        self._client = client
        self._clock = clock
        self._source = source or make_source(cfg.endpoints)
        picking = router_cfg.picking_for(cfg)
        self.prefix_cfg = picking.prefix
        self.endpoints = EndpointSet(
            cfg.name, router_cfg.circuit_breaker, self._health.stale_after_s, clock, endpoint_observer
        )
        self.prefix_index = make_prefix_index(picking.prefix)
        self.endpoints.on_reset(self.prefix_index.forget)
        self.runner: PickRunner = build_runner(picking, PluginContext(cfg.name, self.prefix_index), pick_observer)
        self.needs_hashes = any(s.type == "prefix-affinity" for s in picking.scorers)
        # Until the engine's tokenizer arrives, approximate mode hashes text (consistent with
        # itself, which is all it needs); precise mode must match the engine, so it waits.
        self.hasher = PromptHasher(
            picking.prefix.block_size or DEFAULT_BLOCK_SIZE, None, text_fallback=picking.prefix.mode == "approximate"
        )
        self._tokenizer_pending = cfg.tokenizer.source == "engine" and self.needs_hashes
        self._tasks: list[asyncio.Task[None]] = []
        self._next_models = 0.0
        self._next_digest = 0.0
        self._next_tokenizer = 0.0
        self._tokenizer_task: asyncio.Task[None] | None = None
        self._checking: set[str] = set()
        self._checks: set[asyncio.Task[None]] = set()
        self.cold_start = (
            ColdStartGate(cfg.name, cfg.cold_start, lambda: any(s.breaker.available for s in self.endpoints), clock)
            if cfg.cold_start is not None
            else None
        )

    # lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.cfg.tokenizer.source == "file" and self.needs_hashes:
            assert self.cfg.tokenizer.path is not None
            payload = json.loads(Path(self.cfg.tokenizer.path).read_text())
            self.hasher = await asyncio.to_thread(self._hasher_from_payload, payload)
        self._tasks = [
            asyncio.create_task(self._discover(), name=f"discover-{self.name}"),
            asyncio.create_task(self._poll_forever(), name=f"poll-{self.name}"),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._checks, *([self._tokenizer_task] if self._tokenizer_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def _discover(self) -> None:
        async for urls in self._source.watch():
            log.info("pool %s: %d endpoint(s)", self.name, len(urls))
            self.endpoints.set_urls(sorted(urls))
            if self.cold_start is not None:
                self.cold_start.endpoints_changed()

    # polling --------------------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            started = self._clock()
            try:
                await self.poll_once()
            except Exception:  # a poller must never die
                log.exception("pool %s: polling failed", self.name)
            if self.cold_start is not None:
                self.cold_start.endpoints_changed()
            elapsed = self._clock() - started
            await asyncio.sleep(max(0.05, self._health.scrape_interval_s - elapsed))

    async def poll_once(self) -> None:
        """One round: probe every endpoint's ``/health``; scrape the healthy ones' metrics (and
        models/digests when due)."""
        now = self._clock()
        want_models = now >= self._next_models
        if want_models:
            self._next_models = now + self._health.models_interval_s
        want_digest = isinstance(self.prefix_index, PrecisePrefixIndex) and now >= self._next_digest
        if want_digest:
            self._next_digest = now + self.prefix_cfg.digest_interval_s
        states = list(self.endpoints)
        log.debug("pool %s: polling %d endpoint(s)", self.name, len(states))
        await asyncio.gather(*(self._poll_endpoint(s, want_models, want_digest) for s in states))
        if self._tokenizer_pending and now >= self._next_tokenizer and not self._tokenizer_task:
            self._next_tokenizer = now + 5.0
            self._tokenizer_task = asyncio.create_task(self._fetch_tokenizer(states))
            self._tokenizer_task.add_done_callback(lambda _: setattr(self, "_tokenizer_task", None))

    async def _get(self, url: str) -> httpx.Response:
        return await self._client.get(url, timeout=self._health.probe_timeout_s)

    async def _health_ok(self, url: str) -> bool | None:
        """The engine's own verdict: True (200), False (other status, refused, reset), None (no
        answer in time: busy, not known dead)."""
        try:
            return (await self._get(url + "/health")).status_code == 200
        except httpx.TimeoutException:
            return None
        except httpx.HTTPError:
            return False

    def check_health_soon(self, url: str) -> None:
        """Probe ``url``'s ``/health`` now (a request there just failed): ejects it at once if the
        engine itself reports trouble, leaves it serving if the failure was the request's own."""
        if url in self._checking:
            return
        self._checking.add(url)

        async def check() -> None:
            try:
                if await self._health_ok(url) is False and self.endpoints.eject(url):
                    log.warning("pool %s: %s ejected: its /health fails", self.name, url)
            finally:
                self._checking.discard(url)

        task = asyncio.create_task(check())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _poll_endpoint(self, state: EndpointState, want_models: bool, want_digest: bool) -> None:
        url = state.url
        healthy = await self._health_ok(url)
        if healthy is False:
            if self.endpoints.eject(url):
                log.warning("pool %s: %s ejected: its /health fails", self.name, url)
            state.set_metrics(None, self._clock())
            return
        if healthy is None:
            return  # no verdict: an ejected endpoint stays out, a serving one keeps serving
        was_out = not state.breaker.available
        # Requests held for a pool at zero: its first engine back is better than none, however
        # often it went away before (an engine stopped when idle is not a flapping one).
        held = self.cold_start is not None and self.cold_start.waiting > 0
        if self.endpoints.probe_passed(url, at_once=held):
            log.info("pool %s: %s readmitted", self.name, url)
            want_models = True
            want_digest = isinstance(self.prefix_index, PrecisePrefixIndex)
        elif was_out:
            return  # still inside its hold time
        taken_at = self._clock()
        try:
            resp = await self._get(url + "/metrics")
        except httpx.HTTPError:
            return  # metrics go stale; liveness is /health's to say
        state.set_metrics(parse_engine_metrics(resp.text) if resp.status_code == 200 else None, taken_at)
        state.kv_capacity = parse_kv_capacity(resp.text) if resp.status_code == 200 else None
        if want_models:
            await self._fetch_models(state)
        if want_digest:
            await self._fetch_digest(state)

    async def _fetch_models(self, state: EndpointState) -> None:
        try:
            resp = await self._get(state.url + "/v1/models")
            data = resp.json().get("data", []) if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return
        if isinstance(data, list):
            state.models = frozenset(m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str))

    async def _fetch_digest(self, state: EndpointState) -> None:
        assert isinstance(self.prefix_index, PrecisePrefixIndex)
        taken_at = self._clock()
        try:
            resp = await self._get(state.url + "/shoal/kv/digest")
            body = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return
        if isinstance(body, dict) and isinstance(body.get("hashes"), list):
            self.prefix_index.update_digest(state.url, (int(h) for h in body["hashes"]), taken_at)

    def _hasher_from_payload(self, payload: dict[str, Any]) -> PromptHasher:
        return PromptHasher.from_payload(
            payload, self.prefix_cfg.block_size, text_fallback=self.prefix_cfg.mode == "approximate"
        )

    async def _fetch_tokenizer(self, states: list[EndpointState]) -> None:
        for state in states:
            if not state.breaker.available:
                continue
            try:
                resp = await self._client.get(state.url + "/shoal/tokenizer", timeout=10.0)
                if resp.status_code != 200:
                    continue
                payload = resp.json()
                hasher = await asyncio.to_thread(self._hasher_from_payload, payload)
            except Exception as exc:
                log.warning("pool %s: cannot load tokenizer from %s: %s", self.name, state.url, exc)
                continue
            if self.prefix_cfg.mode == "approximate":
                # Text-hashed entries can never match token hashes again: start clean.
                for s in states:
                    self.prefix_index.forget(s.url)
            self.hasher = hasher
            self._tokenizer_pending = False
            log.info("pool %s: tokenizer loaded from %s (block size %d)", self.name, state.url, hasher.block_size)
            return
