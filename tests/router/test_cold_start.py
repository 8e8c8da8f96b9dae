"""Scale from zero, router side: a pool with no ready engine holds requests (bounded, with a
timeout), reports its demand on /shoal/demand and /metrics, and releases them when an engine
comes up (fake engines on 127.0.0.1; fast)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from _fakes import FakeEngine, Served, free_socket
from test_proxy_fake import chat_body, router_config

from shoal.router.app import create_app
from shoal.router.cold_start import DEMAND_PATH, ColdStartGate
from shoal.router.config_pools import ColdStartConfig
from shoal.router.errors import RouterError
from shoal.router.server import uvicorn_settings


def _cold_config(url: str, scrape_s: float, eject_s: float, **cold_start: Any) -> Any:
    breaker = {"consecutiveFailures": 2, "ejectS": eject_s, "maxEjectS": max(0.5, eject_s)}
    cfg = router_config([url], health={"scrapeIntervalS": scrape_s, "probeTimeoutS": 2.0}, circuitBreaker=breaker)
    pool = cfg.pools[0].model_copy(update={"cold_start": ColdStartConfig(**cold_start)})
    return cfg.model_copy(update={"pools": [pool]})


class ColdRouter:
    """A router whose only pool's engine (one static URL) is not started until ``start_engine``."""

    def __init__(self, scrape_s: float = 0.05, eject_s: float = 0.2, **cold_start: Any) -> None:
        sock = free_socket()
        self.port = sock.getsockname()[1]
        sock.close()
        self.engine = FakeEngine("late")
        self.engine_server: Served | None = None
        self.cfg = _cold_config(f"http://127.0.0.1:{self.port}", scrape_s, eject_s, **cold_start)
        self.url = ""

    async def __aenter__(self) -> ColdRouter:
        self.app = create_app(self.cfg)
        self.router = await Served(self.app, settings=uvicorn_settings(self.cfg)).start()
        self.url = self.router.url
        gate = self.app.services.pools["chat"].cold_start
        assert gate is not None
        self.gate = gate
        for _ in range(200):  # the first probe finds nobody at the engine's port
            if not any(s.breaker.available for s in self.app.services.pools["chat"].endpoints):
                break
            await asyncio.sleep(0.02)
        return self

    async def start_engine(self) -> None:
        self.engine_server = await Served(self.engine.app(), port=self.port).start()

    async def __aexit__(self, *exc: object) -> None:
        await self.router.stop()
        if self.engine_server is not None:
            await self.engine_server.stop()


async def _wait_waiting(c: httpx.AsyncClient, n: int) -> dict[str, Any]:
    for _ in range(250):
        pools = (await c.get(DEMAND_PATH)).json()["pools"]
        if pools and pools[0]["waiting"] == n:
            return pools[0]  # type: ignore[no-any-return]
        await asyncio.sleep(0.02)
    raise AssertionError(f"never {n} waiting: {pools}")


async def test_request_waits_for_the_first_engine_and_completes() -> None:
    async with ColdRouter() as r, httpx.AsyncClient(base_url=r.url, timeout=30) as c:
        assert (await c.get("/health")).status_code == 200  # served: its requests are held
        pending = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body()))
        demand = await _wait_waiting(c, 1)
        assert demand == {**demand, "pool": "chat", "inflight": 0, "ready_endpoints": 0, "idle_seconds": 0}
        metrics = (await c.get("/metrics")).text
        assert 'shoal_router_cold_start_waiting_requests{pool="chat"} 1.0' in metrics
        assert not pending.done()
        await r.start_engine()
        resp = await pending
        assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"]
        assert len(r.engine.requests) == 1
        after = (await c.get(DEMAND_PATH)).json()["pools"][0]
        assert after["waiting"] == 0 and after["ready_endpoints"] == 1


async def test_held_requests_do_not_wait_out_the_ejection_time() -> None:
    # The engine's port was dead at the first probe (ejected for 30 s); once it answers /health,
    # the held request goes at once: a pool at zero has nothing better to send it to.
    async with ColdRouter(eject_s=30) as r, httpx.AsyncClient(base_url=r.url, timeout=30) as c:
        pending = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body()))
        await _wait_waiting(c, 1)
        await r.start_engine()
        resp = await asyncio.wait_for(pending, 5)
        assert resp.status_code == 200


async def test_hold_times_out_with_503_and_retry_after() -> None:
    async with ColdRouter(timeout_s=0.3) as r, httpx.AsyncClient(base_url=r.url, timeout=30) as c:
        resp = await c.post("/v1/chat/completions", json=chat_body())
        assert resp.status_code == 503 and resp.headers["retry-after"] == "5"
        assert resp.json()["error"]["code"] == "scaling_up_timeout"


async def test_flood_past_the_bound_is_refused_at_once_not_hung() -> None:
    async with ColdRouter(max_waiting=3, timeout_s=30) as r, httpx.AsyncClient(base_url=r.url, timeout=30) as c:
        held = [asyncio.create_task(c.post("/v1/chat/completions", json=chat_body())) for _ in range(3)]
        await _wait_waiting(c, 3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        flood = await asyncio.gather(*(c.post("/v1/chat/completions", json=chat_body()) for _ in range(20)))
        assert loop.time() - started < 5
        assert {x.status_code for x in flood} == {503}
        assert all(x.headers["retry-after"] == "5" and x.json()["error"]["code"] == "scaling_up_queue_full"
                   for x in flood)  # fmt: skip
        await r.start_engine()
        assert [x.status_code for x in await asyncio.gather(*held)] == [200, 200, 200]


async def test_request_racing_the_engine_stop_is_held_not_failed() -> None:
    async with ColdRouter(scrape_s=1.0) as r, httpx.AsyncClient(base_url=r.url, timeout=30) as c:
        await r.start_engine()
        assert (await c.post("/v1/chat/completions", json=chat_body())).status_code == 200
        assert r.engine_server is not None
        await r.engine_server.stop()  # scaled to zero; the router has not probed it yet
        pending = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body()))
        await _wait_waiting(c, 1)  # its connect failure put it back in the hold
        await r.start_engine()
        assert (await pending).status_code == 200


async def test_client_that_leaves_frees_its_place() -> None:
    async with ColdRouter(max_waiting=1) as r, httpx.AsyncClient(base_url=r.url, timeout=30) as c:
        first = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body()))
        await _wait_waiting(c, 1)
        first.cancel()
        await _wait_waiting(c, 0)
        second = asyncio.create_task(c.post("/v1/chat/completions", json=chat_body()))
        await _wait_waiting(c, 1)
        await r.start_engine()
        assert (await second).status_code == 200


async def test_gate_idle_time_and_release() -> None:
    now = [100.0]
    ready = [False]
    gate = ColdStartGate("p", ColdStartConfig(timeout_s=60), lambda: ready[0], clock=lambda: now[0])
    now[0] = 130.0
    assert gate.demand(inflight=0, ready_endpoints=0).idle_seconds == 30.0
    assert gate.demand(inflight=2, ready_endpoints=1).idle_seconds == 0.0  # open requests are activity
    now[0] = 140.0
    assert gate.demand(inflight=0, ready_endpoints=1).idle_seconds == 10.0
    waiter = asyncio.create_task(gate.wait_ready())
    await asyncio.sleep(0)
    assert gate.demand(inflight=0, ready_endpoints=0).waiting == 1
    ready[0] = True
    gate.endpoints_changed()
    assert await asyncio.wait_for(waiter, 1) == 0.0  # the fake clock did not move
    assert gate.waiting == 0 and gate.demand(0, 1).idle_seconds == 0.0


async def test_gate_without_engines_never_waits_when_one_is_ready() -> None:
    gate = ColdStartGate("p", ColdStartConfig(max_waiting=1), lambda: True)
    assert await gate.wait_ready() == 0.0
    gate_full = ColdStartGate("p", ColdStartConfig(max_waiting=1, timeout_s=30), lambda: False)
    held = asyncio.create_task(gate_full.wait_ready())
    await asyncio.sleep(0)
    with pytest.raises(RouterError) as err:
        await gate_full.wait_ready()
    assert err.value.status == 503 and err.value.headers == {"Retry-After": "5"}
    held.cancel()
