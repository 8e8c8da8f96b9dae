"""Pure-ASGI guards that run before routing: API key, request-body size and body read deadline.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched
and the cost per request is a header scan.
"""

from __future__ import annotations

import asyncio
import hmac
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoal.engine.server.errors import APIError, BodyTimeout, BodyTooLarge, bad_request, body_too_large

TRUSTED_SCOPE_KEY = "shoal.trusted"
"""Set in the ASGI scope when the caller passed the API key check (or the engine runs keyless)."""

PUBLIC_PATHS = frozenset({"/health", "/metrics"})
"""Answered without an API key (probes and scrapers carry none)."""


class RequestGuardMiddleware:
    """Rejects unauthenticated requests (401), bodies over ``max_body_bytes`` (413) and bodies
    not received within ``body_timeout_s`` (408, e.g. a Content-Length never fulfilled)."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, api_key: str | None = None, body_timeout_s: float = 60.0
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self._key = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: bytes | None = None
        auth = b""
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"authorization":
                auth = value
        trusted = self._key is None or hmac.compare_digest(auth, self._key)
        if not trusted and scope["path"] not in PUBLIC_PATHS:
            error = APIError(401, "Invalid or missing API key.", code="invalid_api_key")
            await error.response()(scope, receive, send)
            return
        scope[TRUSTED_SCOPE_KEY] = trusted
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await bad_request("Invalid Content-Length header.").response()(scope, receive, send)
                return
            if declared > self.max_body_bytes:
                await body_too_large(self.max_body_bytes).response()(scope, receive, send)
                return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        """Enforce the size limit on bodies without a Content-Length (chunked) and the read deadline."""
        seen = 0
        limit = self.max_body_bytes
        timeout = self.body_timeout_s
        deadline = time.monotonic() + timeout
        body_done = False

        async def wrapped() -> Message:
            nonlocal seen, body_done
            if body_done:  # later receives wait for a disconnect: no deadline on those
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BodyTimeout(timeout) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        return wrapped
