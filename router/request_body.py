"""Reading a whole ASGI request body under a size limit (the proxy and peer forwarding)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from shoal.router.errors import payload_too_large

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body; None when the client disconnected first; RouterError 413 above ``limit``."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise payload_too_large(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)
