"""Relaying an engine's answer to the client: whole bodies and SSE streams, under the total timeout."""

from __future__ import annotations

import asyncio
import logging
import time

from shoal.router.asgi import Send
from shoal.router.errors import sse_error_event, upstream_failed
from shoal.router.programs.response import ResponseObserver
from shoal.router.upstream import UpstreamError, UpstreamResponse
from shoal.router.upstream_attempts import Attempt, UpstreamAttempts

log = logging.getLogger("shoal.router.proxy")


def _response_headers(resp: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", resp.headers.get("content-type", "application/json").encode("latin-1"))]
    for name in ("content-encoding", "retry-after"):
        value = resp.headers.get(name)
        if value:
            out.append((name.encode("latin-1"), value.encode("latin-1")))
    return out


async def relay_body(
    attempts: UpstreamAttempts, attempt: Attempt, send: Send, started: float, observer: ResponseObserver | None
) -> None:
    """Read the whole answer, then send it in one piece."""
    resp = attempt.resp
    try:
        remaining = max(0.001, attempts.timeouts.total_s - (time.perf_counter() - started))
        async with asyncio.timeout(remaining):
            rest = [chunk async for chunk in attempt.chunks]
        body = attempt.first + b"".join(rest)
    except (TimeoutError, UpstreamError) as exc:
        resp.close()
        if isinstance(exc, UpstreamError):
            attempt.pool.endpoints.record_failure(attempt.url)
        err = upstream_failed(f"engine failed mid-response: {exc or type(exc).__name__}")
        attempts.finish(attempt, err.status, started, False)
        raise err from None
    except BaseException:
        resp.close()
        attempts.finish(attempt, 499, started, False)
        raise
    resp.close()
    attempts.finish(attempt, resp.status, started, resp.status < 500)
    if observer is not None and resp.status == 200:
        observer.feed_body(body)
    await send({"type": "http.response.start", "status": resp.status, "headers": _response_headers(resp)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def relay_stream(
    attempts: UpstreamAttempts, attempt: Attempt, send: Send, started: float, observer: ResponseObserver | None
) -> None:
    """Pass SSE chunks through as they arrive; an upstream failure ends the stream with an error event."""
    resp = attempt.resp
    deadline = started + attempts.timeouts.total_s
    status, ok = 200, True
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _response_headers(resp)})
        if attempt.first:
            if observer is not None:
                observer.feed_chunk(attempt.first)
            await send({"type": "http.response.body", "body": attempt.first, "more_body": True})
        try:
            async for chunk in attempt.chunks:
                if observer is not None:
                    observer.feed_chunk(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if time.perf_counter() > deadline:
                    raise TimeoutError
        except (TimeoutError, UpstreamError) as exc:
            ok, status = False, 502
            if isinstance(exc, UpstreamError):
                attempt.pool.endpoints.record_failure(attempt.url)
            message = "engine stream timed out" if isinstance(exc, TimeoutError) else "engine connection lost"
            log.info("pool %s: %s: %s mid-stream", attempt.pool.name, attempt.url, message)
            await send({"type": "http.response.body", "body": sse_error_event(message), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except (asyncio.CancelledError, OSError):
        status, ok = 499, False
        attempts.s.metrics.client_disconnects.labels(attempt.pool.name).inc()
        raise
    finally:
        resp.close()
        attempts.finish(attempt, status, started, ok)
