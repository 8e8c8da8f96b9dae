"""Forwarding between two in-process router replicas: what reaches the owner, what comes back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from _fakes import FakeEngine, Served
from test_real_engines import _free_port

from shoal.router.app import create_app
from shoal.router.config import RouterConfig
from shoal.router.programs.ownership import owner_of

MESSAGES = [{"role": "user", "content": "hi"}]


def _config(self_url: str, replicas: list[str], engine: str, health_interval_s: float = 0.1) -> RouterConfig:
    return RouterConfig.model_validate({
        "pools": [{"name": "chat", "models": ["tiny"], "endpoints": {"static": [engine]},
                   "tokenizer": {"source": "none"}}],
        "retries": {"maxAttempts": 1},
        "programs": {"classes": [{"name": "agents", "model": "tiny"}]},
        "peers": {"self": self_url, "static": replicas, "healthIntervalS": health_interval_s},
    })  # fmt: skip


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[list[Served], FakeEngine]]:
    engine = FakeEngine("e0")
    engine_served = await Served(engine.app()).start()
    ports = [_free_port() for _ in range(2)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    routers = [await Served(create_app(_config(u, urls, engine_served.url)), port=p).start() for u, p in zip(urls, ports, strict=True)]
    for _ in range(100):  # each has seen the other answer since it started
        if all(len(_services(r).peers.peers.live()) == 2 for r in routers):
            break
        await asyncio.sleep(0.05)
    yield routers, engine
    for r in routers:
        await r.stop()
    await engine_served.stop()


def _owned_by(owner: str, urls: list[str]) -> str:
    return next(p for p in (f"prog-{i}" for i in range(200)) if owner_of(p, urls) == owner)


def _services(router: Served) -> Any:
    return router.app.services


async def test_every_way_of_naming_a_program_reaches_its_owner(replicas: tuple[list[Served], FakeEngine]) -> None:
    routers, engine = replicas
    urls = [r.url for r in routers]
    program = _owned_by(urls[1], urls)
    bodies: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({"program_id": program}, {}),
        ({"extra_body": {"program_id": program}}, {}),
        ({}, {"x-shoal-program-id": program}),
    ]
    async with httpx.AsyncClient(timeout=10) as client:
        for extra, headers in bodies:
            r = await client.post(urls[0] + "/v1/chat/completions", headers=headers,
                                  json={"model": "tiny", "messages": MESSAGES, **extra})  # fmt: skip
            assert r.status_code == 200, r.text
        view = (await client.get(urls[0] + f"/v1/programs/{program}")).json()
    assert view["turns"] == len(bodies)
    assert _services(routers[1]).programs.scheduler.view(program, "anonymous").turns == len(bodies)
    assert len(engine.requests) == len(bodies)


async def test_the_owners_error_answer_reaches_the_client_as_is(replicas: tuple[list[Served], FakeEngine]) -> None:
    routers, engine = replicas
    urls = [r.url for r in routers]
    engine.status, engine.retry_after = 429, "7"
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(urls[0] + "/v1/chat/completions",
                              json={"model": "tiny", "messages": MESSAGES, "program_id": _owned_by(urls[1], urls)})  # fmt: skip
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["type"]


async def test_a_program_call_with_an_oversized_body_is_refused_before_forwarding(
    replicas: tuple[list[Served], FakeEngine],
) -> None:
    routers, _ = replicas
    urls = [r.url for r in routers]
    limit = _services(routers[0]).cfg.limits.max_body_bytes
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(urls[0] + f"/v1/programs/{_owned_by(urls[1], urls)}/release", content=b"x" * (limit + 1))
    assert r.status_code == 413
    assert _services(routers[0]).peers.forwards.labels("forwarded")._value.get() == 0


async def test_an_unreachable_owner_hands_its_programs_to_the_next_replica() -> None:
    engine = FakeEngine("e0")
    engine_served = await Served(engine.app()).start()
    port, dead_port = _free_port(), _free_port()
    urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{dead_port}"]  # nothing listens on the second
    # Probes too rare to notice first: the failed forward itself must hand the program over.
    router = await Served(create_app(_config(urls[0], urls, engine_served.url, 60)), port=port).start()
    program = _owned_by(urls[1], urls)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(urls[0] + "/v1/chat/completions",
                                  json={"model": "tiny", "messages": MESSAGES, "program_id": program})  # fmt: skip
            assert r.status_code == 200, r.text
            release = await client.post(urls[0] + f"/v1/programs/{program}/release")
            assert release.status_code == 200, release.text
        peers = _services(router).peers
        assert peers.peers.live() == [urls[0]]
        assert peers.forwards.labels("owner_unreachable")._value.get() >= 1
    finally:
        await router.stop()
        await engine_served.stop()


async def test_programs_listed_from_any_replica(replicas: tuple[list[Served], FakeEngine]) -> None:
    routers, _ = replicas
    urls = [r.url for r in routers]
    programs = [_owned_by(urls[0], urls), _owned_by(urls[1], urls)]
    async with httpx.AsyncClient(timeout=10) as client:
        for p in programs:
            r = await client.post(urls[1] + "/v1/chat/completions",
                                  json={"model": "tiny", "messages": MESSAGES, "program_id": p})  # fmt: skip
            assert r.status_code == 200
        for url in urls:
            listed = json.loads((await client.get(url + "/v1/programs")).text)
            assert sorted(v["id"] for v in listed["data"]) == sorted(programs)


async def test_a_slow_but_live_replica_is_not_declared_dead() -> None:
    """Regression: the probe timeout was the probe interval, so a busy replica flapped dead."""
    from prometheus_client import CollectorRegistry
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from shoal.router.config import PeersConfig
    from shoal.router.peers import PeerSet

    async def slow_health(_: Any) -> Response:
        await asyncio.sleep(0.3)
        return Response(status_code=200)

    slow = await Served(Starlette(routes=[Route("/health", slow_health)])).start()
    me = "http://127.0.0.1:9"
    cfg = PeersConfig.model_validate({"self": me, "static": [me, slow.url], "healthIntervalS": 0.1})
    async with httpx.AsyncClient() as client:
        peers = PeerSet(cfg, client, CollectorRegistry())
        await peers.start()
        try:
            await asyncio.sleep(1.0)
            assert peers.live() == [me, slow.url]
        finally:
            await peers.stop()
            await slow.stop()
