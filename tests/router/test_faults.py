"""Issue 11, router side: client errors vs engine failures, health from /health, prompt
readmission, 429 spill-over (fake engines on 127.0.0.1; fast)."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from _fakes import FakeEngine
from test_proxy_fake import Harness, chat_body

from shoal.router.config import CircuitBreakerConfig
from shoal.router.reliability import CircuitBreaker


def _healthy(h: Harness) -> int:
    return sum(1 for e in h.app.services.pools["chat"].endpoints if e.breaker.available)


async def test_client_error_is_passed_on_and_never_retried() -> None:
    engines = [FakeEngine("e0", status=400), FakeEngine("e1", status=400)]
    async with Harness(engines) as h, httpx.AsyncClient(base_url=h.url) as c:
        r = await c.post("/v1/chat/completions", json=chat_body())
        assert r.status_code == 400 and "says 400" in r.json()["error"]["message"]
        assert sum(len(e.requests) for e in engines) == 1
        assert _healthy(h) == 2


async def test_poison_request_is_not_spread_and_ejects_nobody() -> None:
    # Engines that fail the request itself (500) but whose /health is fine: one retry at most,
    # the engine's own error reaches the client, and every engine keeps serving.
    engines = [FakeEngine(f"e{i}", status=500) for i in range(3)]
    async with Harness(engines) as h, httpx.AsyncClient(base_url=h.url) as c:
        for i in range(4):
            r = await c.post("/v1/chat/completions", json=chat_body(user=f"u{i}"))
            assert r.status_code == 500 and "says 500" in r.json()["error"]["message"]
        assert sum(len(e.requests) for e in engines) == 8  # 4 requests x (1 try + 1 retry)
        await asyncio.sleep(0.3)  # the health checks the 5xx triggered have answered
        assert _healthy(h) == 3


async def test_health_endpoint_not_metrics_decides_liveness() -> None:
    sick, fine = FakeEngine("sick"), FakeEngine("fine")
    async with Harness([sick, fine]) as h, httpx.AsyncClient(base_url=h.url) as c:
        sick.health_status = 503  # its /metrics still answers 200
        for _ in range(100):
            if _healthy(h) == 1:
                break
            await asyncio.sleep(0.02)
        assert _healthy(h) == 1
        before = len(sick.requests)
        for i in range(6):
            assert (await c.post("/v1/chat/completions", json=chat_body(user=f"u{i}"))).status_code == 200
        assert len(sick.requests) == before


async def test_engine_failing_its_health_after_a_5xx_is_ejected_at_once() -> None:
    broken, fine = FakeEngine("broken", status=503), FakeEngine("fine")
    cfg = {"health": {"scrapeIntervalS": 30, "probeTimeoutS": 2.0}}  # the poller stays out of it
    async with Harness([broken, fine], cfg) as h, httpx.AsyncClient(base_url=h.url) as c:
        broken.health_status = 503
        for i in range(4):
            assert (await c.post("/v1/chat/completions", json=chat_body(user=f"u{i}"))).status_code == 200
        await asyncio.sleep(0.2)
        assert _healthy(h) == 1


async def test_engine_back_gets_traffic_within_5_s_of_its_health_turning_good(caplog: pytest.LogCaptureFixture) -> None:
    back, other = FakeEngine("back"), FakeEngine("other")
    cfg = {"circuitBreaker": {"consecutiveFailures": 2, "ejectS": 1.0, "maxEjectS": 30}}
    async with Harness([back, other], cfg) as h, httpx.AsyncClient(base_url=h.url) as c:
        back.health_status, back.status = 503, 503
        # Many requests fail at the moment of ejection; that must not lengthen the time out.
        results = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=chat_body(user=f"x{i}")) for i in range(20))
        )
        assert all(r.status_code == 200 for r in results)
        await asyncio.sleep(2.5)  # a long outage: failed probes all along
        assert _healthy(h) == 1
        back.health_status, back.status = 200, 200
        turned_good = time.monotonic()
        before = len(back.requests)
        i = 0
        while len(back.requests) == before:
            assert time.monotonic() - turned_good < 5.0, "the recovered engine got no traffic within 5 s"
            r = await c.post("/v1/chat/completions", json=chat_body(user=f"y{i}"))
            assert r.status_code == 200
            i += 1
            await asyncio.sleep(0.02)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no poll crashed on readmission


async def test_full_engine_429_spills_to_one_with_room_and_all_full_passes_retry_after() -> None:
    full, room = FakeEngine("full", status=429, retry_after="7"), FakeEngine("room")
    async with Harness([full, room]) as h, httpx.AsyncClient(base_url=h.url) as c:
        for i in range(6):
            r = await c.post("/v1/chat/completions", json=chat_body(user=f"u{i}"))
            assert r.status_code == 200 and r.json()["system_fingerprint"] == "room"
        assert _healthy(h) == 2  # being full is no failure
        room.status, room.retry_after = 429, "3"
        r = await c.post("/v1/chat/completions", json=chat_body())
        assert r.status_code == 429 and r.headers["retry-after"] in {"3", "7"}
        assert r.json()["error"]["type"]


def test_breaker_counts_one_outage_once_and_readmits_at_the_first_good_probe() -> None:
    now = [0.0]
    br = CircuitBreaker(CircuitBreakerConfig(consecutive_failures=2, eject_s=1, max_eject_s=8), clock=lambda: now[0])
    assert not br.record_failure()
    assert br.record_failure() and not br.available
    until = br.open_until
    for _ in range(50):  # requests in flight at the moment of ejection fail too
        assert not br.record_failure()
    assert br.open_until == until
    now[0] = 0.5
    assert not br.probe_passed()  # inside the hold time
    now[0] = 100.0  # a long outage (failed probes change nothing), then the engine is back
    assert not br.record_failure()
    assert br.probe_passed() and br.available
    # Ejected again soon after a readmission: flapping doubles the hold time, capped.
    now[0] = 101.0
    assert br.eject() and br.open_until == 103.0
    now[0] = 103.0
    assert br.probe_passed()
    assert br.eject() and br.open_until == 103.0 + 4.0


async def test_polling_logs_nothing_at_info(caplog: pytest.LogCaptureFixture) -> None:
    from shoal.router.__main__ import configure_logging

    configure_logging("info")
    caplog.set_level(logging.INFO)
    async with Harness([FakeEngine("e0")]) as h:
        caplog.clear()
        await asyncio.sleep(0.5)  # ten polls
        assert h.app.services.pools["chat"].endpoints.get(h.servers[0].url) is not None
    polls = [r for r in caplog.records if r.levelno >= logging.INFO and r.name in {"httpx", "shoal.router.pool"}]
    assert not polls, [r.getMessage() for r in polls]


async def test_retry_settings_turn_spill_over_and_5xx_retries_off() -> None:
    full, room = FakeEngine("full", status=429, retry_after="9"), FakeEngine("room")
    cfg = {"retries": {"retryOnFull": False, "maxServerErrorRetries": 0}, "picking": {"scorers": [], "picker": "round-robin"}}
    async with Harness([full, room], cfg) as h, httpx.AsyncClient(base_url=h.url) as c:
        statuses = [(await c.post("/v1/chat/completions", json=chat_body())).status_code for _ in range(4)]
        assert sorted(statuses) == [200, 200, 429, 429]
        full.status = 500
        statuses = [(await c.post("/v1/chat/completions", json=chat_body())).status_code for _ in range(4)]
        assert sorted(statuses) == [200, 200, 500, 500]
