"""Pure-ASGI guards that run before routing: API key and request-body size.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched
and the cost per request is a header scan.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoal.engine.server.errors import APIError, BodyTooLarge, bad_request, body_too_large

PUBLIC_PATHS = frozenset({"/health", "/metrics"})
"""Answered without an API key (probes and scrapers carry none)."""


class RequestGuardMiddleware:
    """Rejects unauthenticated requests (401) and bodies over ``max_body_bytes`` (413)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, api_key: str | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
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
        if self._key is not None and scope["path"] not in PUBLIC_PATHS and not hmac.compare_digest(auth, self._key):
            error = APIError(401, "Invalid or missing API key.", code="invalid_api_key")
            await error.response()(scope, receive, send)
            return
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
        """Enforce the limit on bodies without a Content-Length (chunked)."""
        seen = 0
        limit = self.max_body_bytes

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return wrapped
