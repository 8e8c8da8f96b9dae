"""SIMULATOR as real asyncio HTTP servers: a SimEngine behind an OpenAI-style API in real time.

Serves ``/v1/chat/completions`` (SSE streaming or not, with ``usage.prompt_tokens_details
.cached_tokens``), ``/v1/models``, ``/health``, ``/metrics`` (vLLM names) and
``/shoal/kv/digest``, so a real router process can be pointed at a fleet of them.
Tokens are words (a stable hash of each word), so use the router's approximate prefix
mode with ``tokenizer: {source: none}`` in front of it.

    python -m bench.sim.server --port 9200 --name sim-0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bench.sim.engine import EngineSpec, SimEngine, SimRequest
from shoal.engine.block_hash import prefix_block_hashes

MODEL = "sim"
VOCAB = 32000


def word_ids(text: str) -> list[int]:
    return [zlib.crc32(w.encode()) % VOCAB for w in text.split()]


def chat_tokens(messages: list[dict[str, Any]]) -> list[int]:
    tokens: list[int] = []
    for m in messages:
        tokens.append(zlib.crc32(str(m.get("role")).encode()) % VOCAB)
        tokens += word_ids(str(m.get("content") or ""))
    return tokens


class SimServer:
    """One simulated engine, stepping in real time."""

    def __init__(self, name: str, spec: EngineSpec = EngineSpec(), time_scale: float = 1.0) -> None:
        self.engine = SimEngine(name, spec)
        self.time_scale = time_scale
        self._wake = asyncio.Event()
        self._streams: dict[int, asyncio.Queue[int]] = {}
        self._rid = itertools.count()
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        start = time.monotonic()
        while True:
            now = (time.monotonic() - start) / self.time_scale
            end = self.engine.start_step(now)
            if end is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep((end - now) * self.time_scale)
            before = {r.rid: r.generated for r in self.engine.running}
            _, done = self.engine.finish_step(end)
            for req in [*self.engine.running, *done]:
                queue = self._streams.get(req.rid)
                if queue is not None:
                    for _ in range(req.generated - before.get(req.rid, 0)):
                        queue.put_nowait(1)
                    if req in done:
                        queue.put_nowait(0)

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            self._task = asyncio.create_task(self._loop())
            yield
            self._task.cancel()

        async def chat(request: Request) -> Response:
            body = await request.json()
            out_len = int(body.get("max_tokens") or 16)
            reply_words = " ".join(f"w{(hash(json.dumps(body['messages'])) + i) % 997}" for i in range(out_len - 1))
            prompt = chat_tokens(body["messages"])
            output = chat_tokens([{"role": "assistant", "content": reply_words}])
            bs = self.engine.spec.block_size
            salt = request.headers.get("x-shoal-cache-salt", "")  # tenants share cached blocks only when equal
            req = SimRequest(next(self._rid), 0.0, len(prompt), len(output), prefix_block_hashes(prompt, bs, salt),
                             prefix_block_hashes(prompt + output, bs, salt))
            queue: asyncio.Queue[int] = asyncio.Queue()
            self._streams[req.rid] = queue
            self.engine.add(req)
            self._wake.set()
            usage: dict[str, Any] = {"prompt_tokens": len(prompt), "completion_tokens": out_len,
                     "total_tokens": len(prompt) + out_len}
            if body.get("stream"):
                return StreamingResponse(self._sse(req, queue, reply_words.split(), usage), media_type="text/event-stream")
            while await queue.get():
                pass
            self._streams.pop(req.rid, None)
            usage["prompt_tokens_details"] = {"cached_tokens": req.cached_tokens}
            return JSONResponse({"id": f"sim-{req.rid}", "object": "chat.completion", "created": 0, "model": MODEL,
                                 "choices": [{"index": 0, "finish_reason": "length",
                                              "message": {"role": "assistant", "content": reply_words}}],
                                 "usage": usage})

        async def metrics(_: Request) -> Response:
            return PlainTextResponse(self.engine.metrics_text(MODEL))

        async def digest(_: Request) -> Response:
            return JSONResponse({"block_size": self.engine.spec.block_size, "hashes": self.engine.digest()})

        async def models(_: Request) -> Response:
            return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

        async def health(_: Request) -> Response:
            return Response(status_code=200)

        return Starlette(
            routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/metrics", metrics),
                    Route("/shoal/kv/digest", digest), Route("/v1/models", models), Route("/health", health)],
            lifespan=lifespan,
        )

    async def _sse(self, req: SimRequest, queue: asyncio.Queue[int], words: list[str],
                   usage: dict[str, Any]) -> AsyncIterator[bytes]:
        try:
            i = 0
            while await queue.get():
                word = words[i - 1] if 0 < i <= len(words) else ""
                chunk = {"id": f"sim-{req.rid}", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                         "choices": [{"index": 0, "delta": {"content": (" " if i > 1 else "") + word},
                                      "finish_reason": None}]}
                i += 1
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            usage["prompt_tokens_details"] = {"cached_tokens": req.cached_tokens}
            final = {"id": f"sim-{req.rid}", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                     "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "usage": usage}
            yield f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode()
        finally:
            self._streams.pop(req.rid, None)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="a simulated engine (SIMULATOR) over HTTP")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--name", default="sim")
    parser.add_argument("--time-scale", type=float, default=1.0, help=">1 slows the simulated engine down")
    args = parser.parse_args()
    uvicorn.run(SimServer(args.name, time_scale=args.time_scale).app(), host=args.host, port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
