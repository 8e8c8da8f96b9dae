"""Server-sent events framing: data frames, the usage comment, errors, and the response."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from shoal.engine.server.errors import APIError
from shoal.engine.server.responses import Usage

SSE_DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def sse_usage(usage: Usage) -> bytes:
    """The ``: shoal-usage {...}`` SSE comment that ends a program's stream (clients ignore comments)."""
    payload = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
               "cached_tokens": usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0}  # fmt: skip
    return b": shoal-usage " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def sse_error(exc: BaseException) -> bytes:
    error = exc if isinstance(exc, APIError) else APIError(500, f"{type(exc).__name__}: {exc}")
    return sse(error.body())


class EventStreamResponse(StreamingResponse):
    """SSE response that runs ``on_close`` however it ends.

    A client can vanish before the body generator first runs; its ``finally`` would
    then never run, so the abort hangs off the response itself.
    """

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
