"""A fake engine that speaks the program contract: usage, shoal: KV metrics, pins, tool calls."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class ProgramEngine:
    name: str
    total_blocks: int = 100
    block_size: int = 16
    completion_tokens: int = 8
    tool_call: str | None = None
    """Answer with a call of this tool (content null), as an agent loop's assistant turn."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    releases: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def usage(self, body: dict[str, Any]) -> dict[str, int]:
        prompt = sum(len(str(m.get("content") or "")) for m in body.get("messages", [])) // 4 + 1
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens, "cached_tokens": 0}

    def app(self) -> Starlette:
        async def generate(request: Request) -> Response:
            body = await request.json()
            self.requests.append(body)
            self.headers_seen.append(dict(request.headers))
            usage = self.usage(body)
            if body.get("stream"):
                return StreamingResponse(self._stream(usage), media_type="text/event-stream")
            message: dict[str, Any] = {"role": "assistant", "content": "done"}
            if self.tool_call:
                message = {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": self.tool_call, "arguments": "{}"}}]}
            return JSONResponse({
                "id": "c", "object": "chat.completion", "created": 0, "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
                          "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
                          "prompt_tokens_details": {"cached_tokens": 0}},
            })

        async def release(request: Request) -> Response:
            self.releases.append((request.path_params["program_id"], dict(request.headers)))
            return JSONResponse({"program_id": request.path_params["program_id"], "released_blocks": 0})

        async def metrics(_: Request) -> Response:
            return PlainTextResponse(
                'vllm:num_requests_running{model_name="tiny"} 0\n'
                f'shoal:kv_blocks_total{{model_name="tiny"}} {self.total_blocks}\n'
                f'shoal:free_blocks{{model_name="tiny"}} {self.total_blocks}\n'
                'shoal:kv_blocks_cached{model_name="tiny"} 0\n'
                'shoal:pinned_blocks{model_name="tiny"} 0\n'
                f'shoal:kv_block_size{{model_name="tiny"}} {self.block_size}\n'
            )

        async def models(_: Request) -> Response:
            return JSONResponse({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

        async def health(_: Request) -> Response:
            return Response(status_code=200)

        return Starlette(routes=[
            Route("/v1/chat/completions", generate, methods=["POST"]),
            Route("/v1/programs/{program_id:path}/release", release, methods=["POST"]),
            Route("/metrics", metrics),
            Route("/v1/models", models),
            Route("/health", health),
        ])

    async def _stream(self, usage: dict[str, int]) -> AsyncIterator[bytes]:
        delta: dict[str, Any] = {"role": "assistant", "content": "ok"}
        if self.tool_call:
            delta = {"role": "assistant", "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": self.tool_call, "arguments": ""}}]}
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "tiny",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        comment = b": shoal-usage " + json.dumps(usage).encode() + b"\n\n"
        yield comment[:9]  # split across chunks on purpose
        yield comment[9:] + b"data: [DONE]\n\n"
