"""Issue 11, router side: request-head limits and client timeouts (raw sockets), bodies that
used to give a 500, OpenAI-shaped 404/405, and a huge prompt that must not stall other streams."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from _fakes import FakeEngine
from test_proxy_fake import Harness, chat_body

LIMITS = {
    "limits": {"maxHeaderBytes": 4096, "maxHeaderCount": 20},
    "timeouts": {"connectS": 0.5, "firstByteS": 5, "idleS": 5, "totalS": 20,
                 "clientHeaderS": 0.5, "clientBodyS": 0.5, "clientKeepAliveS": 0.5},
}


@pytest.fixture
async def limited() -> Any:
    async with Harness([FakeEngine("e0")], LIMITS) as h:
        yield h


async def _exchange(url: str, data: bytes, wait_s: float = 3.0) -> tuple[bytes, float]:
    """Send raw bytes, read until the server closes; returns (response, seconds until closed)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    try:
        if data:
            writer.write(data)
            await writer.drain()
        response = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(1 << 20), wait_s):
                response += chunk
        except ConnectionResetError:
            pass  # closed with our unread bytes still in its buffer: a reset, after the answer
        return response, time.monotonic() - started
    finally:
        writer.close()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_oversized_request_head_gets_431(limited: Harness) -> None:
    endless = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000
    response, _ = await _exchange(limited.url, endless)
    assert _status(response) == 431 and b'"error"' in response
    many = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(40)) + b"\r\n"
    response, _ = await _exchange(limited.url, many)
    assert _status(response) == 431
    fine = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"X-Ok: " + b"b" * 2000 + b"\r\n\r\n"
    response, _ = await _exchange(limited.url, fine)
    assert _status(response) == 200


async def test_half_sent_head_and_silent_connection_get_408_and_are_closed(limited: Harness) -> None:
    response, took = await _exchange(limited.url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    assert _status(response) == 408 and took < 2.5
    response, took = await _exchange(limited.url, b"")
    assert _status(response) == 408 and took < 2.5


async def test_short_body_gets_408(limited: Harness) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    response, took = await _exchange(limited.url, head + b'{"model":')
    assert _status(response) == 408 and took < 2.5
    assert b'"code": "request_timeout"' in response and b"connection: close" in response.lower()


async def test_idle_keep_alive_connection_is_closed(limited: Harness) -> None:
    response, took = await _exchange(limited.url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(response) == 200 and 0.3 < took < 2.5  # answered, then closed once idle


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800 lone"}]}',
        b'{"model": "tiny", "prompt": "\\udfff"}',
    ],
    ids=["deep-nesting", "lone-surrogate-chat", "lone-surrogate-completion"],
)
async def test_bodies_that_gave_500_now_get_400(limited: Harness, body: bytes) -> None:
    path = "/v1/completions" if b'"prompt"' in body else "/v1/chat/completions"
    async with httpx.AsyncClient(base_url=limited.url) as c:
        r = await c.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert limited.engines[0].requests == []


async def test_unknown_path_and_wrong_method_are_openai_errors(limited: Harness) -> None:
    async with httpx.AsyncClient(base_url=limited.url) as c:
        for method, path, status in [("GET", "/nope", 404), ("POST", "/v1/nope", 404),
                                     ("GET", "/v1/chat/completions", 405)]:
            r = await c.request(method, path)
            assert r.status_code == status
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"]


def _tokenizer_file(tmp: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from shoal.engine.tokenizer import Tokenizer
    from support.tiny_models import write_smollm2_tokenizer

    write_smollm2_tokenizer(tmp / "tok")
    path = tmp / "tokenizer.json"
    path.write_text(json.dumps({**Tokenizer.from_hf_folder(tmp / "tok").to_payload(), "block_size": 16}))
    return path


async def test_huge_prompt_does_not_stall_other_streams(tmp_path: Path) -> None:
    tokenizer = _tokenizer_file(tmp_path)
    engine = FakeEngine("e0", tokens=40, token_delay_s=0.05)
    async with Harness([engine]) as h:
        pool = h.app.services.pools["chat"]
        from shoal.router.tokenization import PromptHasher

        pool.hasher = PromptHasher.from_payload(json.loads(tokenizer.read_text()))  # tokenizes like the engine
        pool.needs_hashes = True
        client = openai.AsyncOpenAI(base_url=h.url + "/v1", api_key="none", max_retries=0)
        gaps: list[float] = []

        async def watch_stream() -> None:
            stream = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            last = time.monotonic()
            async for _ in stream:
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        watcher = asyncio.create_task(watch_stream())
        await asyncio.sleep(0.3)
        huge = "The quick brown fox jumps over the lazy dog. " * 160_000  # ~7.2 MB
        async with httpx.AsyncClient(base_url=h.url, timeout=60) as c:
            r = await c.post("/v1/chat/completions", json=chat_body(messages=[{"role": "user", "content": huge}]))
        assert r.status_code == 200
        await watcher
        await client.close()
    assert max(gaps[1:]) < 0.5, f"a stream stalled for {max(gaps[1:]):.2f} s"


def test_huge_prompt_digest_work_and_memory_are_bounded(tmp_path: Path) -> None:
    import tracemalloc

    from shoal.router.openai_request import parse_request
    from shoal.router.tokenization import PromptHasher

    hasher = PromptHasher.from_payload(json.loads(_tokenizer_file(tmp_path).read_text()))
    huge = "The quick brown fox jumps over the lazy dog. " * 160_000  # ~7.2 MB
    req = parse_request("chat", json.dumps(chat_body(messages=[{"role": "user", "content": huge}])).encode(), {})
    tracemalloc.start()
    started = time.perf_counter()
    digest = hasher.digest(req, "salt", max_tokenized_bytes=256 * 1024)
    took = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert digest.block_hashes and digest.num_tokens > 1_000_000  # estimated, not tokenized
    assert took < 1.0 and peak < 4 * len(req.raw), (took, peak)


async def test_every_route_gets_a_body_deadline() -> None:
    # Routes other than the proxy (program and tool endpoints) read bodies through the
    # framework: the server protocol bounds them too.
    from _fakes import Served

    from shoal.router.config import RouterConfig
    from shoal.router.server import uvicorn_settings

    async def reads_body(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    cfg = RouterConfig.model_validate({"pools": [{"name": "p", "models": ["m"], "endpoints": {"static": ["http://a:1"]}}],
                                       "timeouts": {"clientBodyS": 0.3}})
    server = await Served(reads_body, settings=uvicorn_settings(cfg)).start()
    try:
        head = b"POST /v1/programs/p1/tools/t HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
        response, took = await _exchange(server.url, head + b"{}")
        assert _status(response) == 408 and took < 3.0
    finally:
        await server.stop()
