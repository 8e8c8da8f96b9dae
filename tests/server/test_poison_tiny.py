"""Issue 11 defect 1 on a real (tiny) engine: no request body and no failing step stops the engine.

In process over ASGI: the real LLMEngine, the real AsyncEngine thread, the real app.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.engine.config import EngineConfig
from shoal.engine.llm_engine import LLMEngine
from shoal.engine.server.api_server import create_app
from shoal.engine.server.async_engine import AsyncEngine
from shoal.engine.server.settings import ServerSettings

USER = [{"role": "user", "content": "hello there"}]
# The three bodies of issue 11, each of which stopped the engine loop for good.
POISON = [
    {"messages": USER, "max_tokens": 4, "min_tokens": 2, "stop_token_ids": [99999999]},
    {"messages": USER, "max_tokens": 4, "n": 2, "seed": 18446744073709551615},
    {"messages": USER, "max_tokens": 4, "top_k": 9223372036854775808},
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> LLMEngine:
    return LLMEngine(EngineConfig(model=str(tiny_model_dir), num_kv_blocks=64, num_threads=1, max_model_len=256))


@pytest.fixture
async def client(engine: LLMEngine) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(AsyncEngine(engine), ServerSettings(served_model_name="tiny", block_size=engine.block_size))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        yield await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60))
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.num_blocks, "every KV block is back"


async def assert_serving(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    r = await client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("body", POISON, ids=["stop-id-outside-vocab", "max-u64-seed-n2", "top-k-2^63"])
async def test_poison_body_is_answered_and_the_engine_goes_on(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["type"] == "invalid_request_error"
    await assert_serving(client)
    r = await client.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 400 or r.text.rstrip().endswith("data: [DONE]")
    await assert_serving(client)


async def test_stop_token_outside_the_vocabulary_is_a_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=POISON[0])
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop_token_ids"


async def test_huge_seed_is_reproducible(client: httpx.AsyncClient) -> None:
    body = {**POISON[1], "temperature": 1.0}
    texts = []
    for _ in range(2):
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200
        texts.append([c["message"]["content"] for c in r.json()["choices"]])
    assert texts[0] == texts[1]


async def test_failing_step_fails_its_request_and_the_next_is_served(
    client: httpx.AsyncClient, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = engine.runner.run
    calls = {"n": 0}

    def run_failing_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(engine.runner, "run", run_failing_once)
    r = await client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 3})
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "server_error" and "request failed in the engine" in error["message"]
    assert "injected fault" in error["message"]
    assert engine.block_manager.num_free_blocks == engine.num_blocks
    await assert_serving(client)


async def test_failing_step_ends_a_stream_with_an_error_event(
    client: httpx.AsyncClient, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = engine.runner.run
    calls = {"n": 0}

    def run_failing_on_the_third_step(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise IndexError("injected fault mid-stream")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(engine.runner, "run", run_failing_on_the_third_step)
    body = {"messages": USER, "max_tokens": 20, "ignore_eos": True, "stream": True}
    r = await client.post("/v1/chat/completions", json=body)
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "injected fault mid-stream" in error["message"]
    await assert_serving(client)


async def test_preemption_and_readmission_log_no_traceback(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import logging

    small = LLMEngine(EngineConfig(model=str(tiny_model_dir), num_kv_blocks=12, num_threads=1, max_model_len=128))
    app = create_app(AsyncEngine(small), ServerSettings(served_model_name="tiny", block_size=small.block_size))
    body = {"prompt": "hello world " * 5, "max_tokens": 60, "ignore_eos": True, "temperature": 0}
    caplog.set_level(logging.DEBUG)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as c:
            results = await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(6)))
    assert all(r.status_code == 200 for r in results)
    assert small.scheduler.num_preemptions > 0, "the pool is small enough to preempt and readmit"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
