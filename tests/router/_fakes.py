"""Fake upstream engines and in-process servers for the router tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class FakeEngine:
    """An OpenAI-ish engine: echoes which engine answered, counts requests, can be told to fail."""

    name: str
    models: tuple[str, ...] = ("tiny",)
    tokens: int = 4
    token_delay_s: float = 0.0
    status: int = 200
    """Answer every generation request with this status (e.g. 500)."""
    die_after_chunks: int | None = None
    """Streams: drop the connection after this many chunks."""
    health_status: int = 200
    """What ``/health`` answers (``/metrics`` keeps answering 200 whatever this is)."""
    retry_after: str | None = None
    """Sent as Retry-After with a non-200 ``status``."""
    waiting: float = 0.0
    kv_usage: float = 0.0
    digest: list[int] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    control_headers_seen: list[dict[str, str]] = field(default_factory=list)
    """Headers of health/metrics/models/digest requests."""
    cancelled: int = 0

    def app(self) -> Starlette:
        async def generate(request: Request) -> Response:
            body = await request.json()
            self.requests.append(body)
            self.headers_seen.append(dict(request.headers))
            if self.status != 200:
                extra = {"retry-after": self.retry_after} if self.retry_after else None
                error = {"error": {"message": f"{self.name} says {self.status}", "type": "server_error"}}
                return JSONResponse(error, status_code=self.status, headers=extra)
            chat = request.url.path.endswith("chat/completions")
            if body.get("stream"):
                return StreamingResponse(self._stream(chat), media_type="text/event-stream")
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s * self.tokens)
            text = " ".join(f"t{i}" for i in range(self.tokens))
            choice = {"index": 0, "finish_reason": "length"}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            return JSONResponse(
                {
                    "id": "cmpl-1", "object": "chat.completion" if chat else "text_completion", "created": 0,
                    "model": body.get("model"), "choices": [choice], "system_fingerprint": self.name,
                    "usage": {"prompt_tokens": 1, "completion_tokens": self.tokens, "total_tokens": 1 + self.tokens},
                }
            )

        async def models(request: Request) -> Response:
            self.control_headers_seen.append(dict(request.headers))
            return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

        async def health(request: Request) -> Response:
            self.control_headers_seen.append(dict(request.headers))
            return Response(status_code=self.health_status)

        async def metrics(request: Request) -> Response:
            self.control_headers_seen.append(dict(request.headers))
            text = (
                f'vllm:num_requests_running{{model_name="{self.models[0]}"}} 0\n'
                f'vllm:num_requests_waiting{{model_name="{self.models[0]}"}} {self.waiting}\n'
                f'vllm:kv_cache_usage_perc{{model_name="{self.models[0]}"}} {self.kv_usage}\n'
            )
            return PlainTextResponse(text)

        async def digest(_: Request) -> Response:
            return JSONResponse({"block_size": 16, "hashes": self.digest})

        return Starlette(
            routes=[
                Route("/v1/chat/completions", generate, methods=["POST"]),
                Route("/v1/completions", generate, methods=["POST"]),
                Route("/v1/models", models),
                Route("/health", health),
                Route("/metrics", metrics),
                Route("/shoal/kv/digest", digest),
            ]
        )

    async def _stream(self, chat: bool) -> AsyncIterator[bytes]:
        try:
            for i in range(self.tokens):
                if self.die_after_chunks is not None and i >= self.die_after_chunks:
                    raise RuntimeError("engine died")
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s)
                delta = {"delta": {"content": f"t{i} "}} if chat else {"text": f"t{i} "}
                chunk = {
                    "id": "c1", "object": "chat.completion.chunk" if chat else "text_completion", "created": 0,
                    "model": self.models[0], "system_fingerprint": self.name,
                    "choices": [{"index": 0, "finish_reason": None, **delta}],
                }
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    sock.setblocking(False)
    return sock


class Served:
    """An ASGI app served by uvicorn in this event loop on 127.0.0.1 (a random port)."""

    def __init__(self, app: Any, port: int | None = None, settings: dict[str, Any] | None = None) -> None:
        self.app = app
        self._port = port
        self._settings = settings or {}
        self.server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> Served:
        sock = free_socket() if self._port is None else _bind(self._port)
        self._port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self._port}"
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1, **self._settings
        )
        self.server = uvicorn.Server(config)
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self.server is not None and self._task is not None:
            self.server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 2)
            except TimeoutError:
                self.server.force_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._task, 3)
        self.server = None
        self._task = None


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(256)
    sock.setblocking(False)
    return sock
