"""The router end to end against fake engines (in-process servers on 127.0.0.1; fast)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from _fakes import FakeEngine, Served

from shoal.router.app import create_app
from shoal.router.config import RouterConfig
from shoal.router.server import uvicorn_settings


def router_config(urls: list[str], **overrides: Any) -> RouterConfig:
    data: dict[str, Any] = {
        "pools": [
            {"name": "chat", "models": ["tiny"], "aliases": ["gpt-4o-mini"], "endpoints": {"static": urls},
             "tokenizer": {"source": "none"}},
        ],
        "health": {"scrapeIntervalS": 0.05, "probeTimeoutS": 2.0},  # generous: the loop is shared with the fakes
        "circuitBreaker": {"consecutiveFailures": 2, "ejectS": 0.2, "maxEjectS": 0.5},
        "timeouts": {"connectS": 0.5, "firstByteS": 5, "idleS": 5, "totalS": 20},
    }
    data.update(overrides)
    return RouterConfig.model_validate(data)


class Harness:
    def __init__(self, engines: list[FakeEngine], cfg_overrides: dict[str, Any] | None = None) -> None:
        self.engines = engines
        self.servers = [Served(e.app()) for e in engines]
        self.overrides = cfg_overrides or {}
        self.router: Served | None = None
        self.url = ""

    async def __aenter__(self) -> Harness:
        for s in self.servers:
            await s.start()
        cfg = router_config([s.url for s in self.servers], **self.overrides)
        self.app = create_app(cfg)
        self.router = await Served(self.app, settings=uvicorn_settings(cfg)).start()
        self.url = self.router.url
        await self.wait_ready()
        return self

    async def wait_ready(self, count: int | None = None) -> None:
        want = len(self.engines) if count is None else count
        async with httpx.AsyncClient() as c:
            for _ in range(200):
                h = (await c.get(self.url + "/health")).json()
                if h["pools"]["chat"]["healthy"] >= want:
                    return
                await asyncio.sleep(0.02)
        raise AssertionError(f"router not ready: {h}")

    async def __aexit__(self, *exc: object) -> None:
        assert self.router is not None
        await self.router.stop()
        for s in self.servers:
            await s.stop()

    def metrics_text(self) -> str:
        return self.app.services.metrics.render().decode()


@pytest.fixture
async def two() -> AsyncIterator[Harness]:
    async with Harness([FakeEngine("e0"), FakeEngine("e1")]) as h:
        yield h


def chat_body(**kw: Any) -> dict[str, Any]:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    body.update(kw)
    return body


async def test_non_streaming_and_alias(two: Harness) -> None:
    async with httpx.AsyncClient(base_url=two.url) as c:
        r = await c.post("/v1/chat/completions", json=chat_body(model="gpt-4o-mini"))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "t0 t1 t2 t3"
    seen = [req["model"] for e in two.engines for req in e.requests]
    assert seen == ["tiny"]  # alias rewritten to the served name


async def test_streaming_with_openai_client(two: Harness) -> None:
    client = openai.AsyncOpenAI(base_url=two.url + "/v1", api_key="none")
    stream = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == "t0 t1 t2 t3 "
    comp = await client.completions.create(model="tiny", prompt="hello", max_tokens=4)
    assert comp.choices[0].text == "t0 t1 t2 t3"
    await client.close()


async def test_models_health_metrics(two: Harness) -> None:
    async with httpx.AsyncClient(base_url=two.url) as c:
        models = (await c.get("/v1/models")).json()
        ids = {m["id"]: m["pool"] for m in models["data"]}
        assert ids == {"tiny": "chat", "gpt-4o-mini": "chat"}
        await c.post("/v1/chat/completions", json=chat_body())
        text = (await c.get("/metrics")).text
    for name in ("shoal_router_requests_total", "shoal_router_plugin_duration_seconds",
                 "shoal_router_time_to_first_byte_seconds", "shoal_router_picks_total"):
        assert name in text


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[]", 400),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400),
        (json.dumps(chat_body(messages=[])).encode(), 400),
        (json.dumps(chat_body(temperature="hot")).encode(), 400),
        (json.dumps(chat_body(temperature=-1)).encode(), 400),
        (json.dumps(chat_body(max_tokens=0)).encode(), 400),
        (json.dumps(chat_body(stream="yes")).encode(), 400),
        (json.dumps(chat_body(model="nope")).encode(), 404),
    ],
)
async def test_bad_requests_never_reach_an_engine(two: Harness, body: bytes, status: int) -> None:
    async with httpx.AsyncClient(base_url=two.url) as c:
        r = await c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert all(not e.requests for e in two.engines)


async def test_body_limit_413() -> None:
    async with Harness([FakeEngine("e0")], {"limits": {"maxBodyBytes": 2048}}) as h:
        async with httpx.AsyncClient(base_url=h.url) as c:
            r = await c.post("/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": "x" * 5000}]))
        assert r.status_code == 413
        assert not h.engines[0].requests


async def test_retry_on_5xx_goes_to_the_other_endpoint() -> None:
    bad, good = FakeEngine("bad", status=500), FakeEngine("good")
    async with Harness([bad, good]) as h:
        async with httpx.AsyncClient(base_url=h.url) as c:
            for i in range(4):
                r = await c.post("/v1/chat/completions", json=chat_body(user=f"u{i}"))
                assert r.status_code == 200
        assert len(good.requests) == 4
        assert 'shoal_router_retries_total{pool="chat",reason="status_500"}' in h.metrics_text()


async def test_dead_endpoint_is_retried_ejected_and_readmitted() -> None:
    e0, e1 = FakeEngine("e0"), FakeEngine("e1")
    async with Harness([e0, e1]) as h:
        port = int(h.servers[0].url.rsplit(":", 1)[1])
        await h.servers[0].stop()
        async with httpx.AsyncClient(base_url=h.url) as c:
            for i in range(6):
                r = await c.post("/v1/chat/completions", json=chat_body(user=f"user-{i}"))
                assert r.status_code == 200, r.text
        assert len(e1.requests) == 6
        await h.wait_ready(count=1)
        text = h.metrics_text()
        assert "shoal_router_endpoint_ejections_total" in text
        # Restart on the same port: the prober readmits it.
        h.servers[0] = Served(e0.app(), port=port)
        await h.servers[0].start()
        await h.wait_ready(count=2)
        assert "shoal_router_endpoint_readmissions_total" in h.metrics_text()


async def test_all_endpoints_down_gives_openai_error() -> None:
    async with Harness([FakeEngine("e0", status=503)]) as h, httpx.AsyncClient(base_url=h.url) as c:
        r = await c.post("/v1/chat/completions", json=chat_body())
        assert r.status_code == 503  # the engine's own answer, passed through on the last attempt
        await h.servers[0].stop()
        for _ in range(100):
            r = await c.post("/v1/chat/completions", json=chat_body())
            if r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_endpoint":
                break
            await asyncio.sleep(0.02)
        assert r.json()["error"]["code"] == "no_healthy_endpoint"


async def test_mid_stream_failure_ends_with_error_event() -> None:
    async with Harness([FakeEngine("e0", tokens=6, die_after_chunks=2)]) as h:
        client = openai.AsyncOpenAI(base_url=h.url + "/v1", api_key="none", max_retries=0)
        stream = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True)
        got: list[str] = []
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
        assert got == ["t0 ", "t1 "]
        await client.close()


async def test_client_disconnect_cancels_upstream() -> None:
    engine = FakeEngine("e0", tokens=200, token_delay_s=0.01)
    async with Harness([engine]) as h:
        async with (
            httpx.AsyncClient(base_url=h.url) as c,
            c.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as r,
        ):
            async for _ in r.aiter_raw():
                break
        for _ in range(100):
            if engine.cancelled:
                break
            await asyncio.sleep(0.02)
        assert engine.cancelled == 1
        assert "shoal_router_client_disconnects_total" in h.metrics_text()


async def test_auth_and_rate_limit(tmp_path: Any) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# comment\nalice:sk-alice-123\nsk-anon-456\n")
    overrides = {
        "auth": {"apiKeysFile": str(keys)},
        "rateLimits": {"perKey": {"alice": {"requestsPerSecond": 0.5, "burst": 2}}},
    }
    async with Harness([FakeEngine("e0")], overrides) as h:
        async with httpx.AsyncClient(base_url=h.url) as c:
            assert (await c.post("/v1/chat/completions", json=chat_body())).status_code == 401
            r = await c.post("/v1/chat/completions", json=chat_body(), headers={"authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert (await c.get("/v1/models")).status_code == 401
            alice = {"authorization": "Bearer sk-alice-123"}
            assert (await c.post("/v1/chat/completions", json=chat_body(), headers=alice)).status_code == 200
            assert (await c.post("/v1/chat/completions", json=chat_body(), headers=alice)).status_code == 200
            r = await c.post("/v1/chat/completions", json=chat_body(), headers=alice)
            assert r.status_code == 429
            assert int(r.headers["retry-after"]) >= 1
            anon = {"x-api-key": "sk-anon-456"}
            assert (await c.post("/v1/chat/completions", json=chat_body(), headers=anon)).status_code == 200
            assert (await c.get("/health")).status_code == 200
            metrics_text = (await c.get("/metrics")).text
        assert "sk-alice" not in metrics_text and "sk-anon" not in metrics_text
        assert all("authorization" not in hs for hs in h.engines[0].headers_seen)


async def test_multi_turn_prefix_affinity_sticks_to_one_engine() -> None:
    engines = [FakeEngine(f"e{i}") for i in range(3)]
    async with Harness(engines) as h, httpx.AsyncClient(base_url=h.url) as c:
        for conv in range(4):
            messages = [{"role": "system", "content": f"conversation {conv} " + "lorem ipsum " * 40}]
            owners = set()
            for turn in range(4):
                messages.append({"role": "user", "content": f"turn {turn} " + "dolor sit amet " * 10})
                r = await c.post("/v1/chat/completions", json=chat_body(messages=messages))
                owners.add(r.json()["system_fingerprint"])
                messages.append(r.json()["choices"][0]["message"])
            assert len(owners) == 1, owners
