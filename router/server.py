"""The router's HTTP server settings: uvicorn with request-head limits and client timeouts.

uvicorn's httptools protocol has no header size or count limit and no header read timeout,
so a client could send an endless header or hold a connection with half a request line.
``GuardedHttpProtocol`` adds what nginx and Envoy enforce: a bounded request head (431), a
deadline for it (408, which also bounds a connection that never sends anything), a deadline
for the body, and the idle keep-alive limit. The proxy enforces the body deadline itself (a
JSON 408 through ASGI); the protocol's, a moment later, covers every other route that reads
a body (program and tool endpoints).
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from shoal.router.config import RouterConfig
from shoal.router.errors import error_body

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_BODY_BACKSTOP_S = 1.0
"""The protocol's body deadline trails the proxy's by this much, so proxied requests get the proxy's answer."""


class _HeadRejected(Exception):
    """Raised from a parser callback to stop parsing a head that broke a limit."""


def _error_response(status: int, message: str) -> bytes:
    body = json.dumps(error_body(message, "invalid_request_error"))
    return b"".join([
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
        body.encode(),
    ])


class GuardedHttpProtocol(HttpToolsProtocol):
    """httptools protocol with a bounded request head and a head read deadline."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        *,
        max_header_bytes: int,
        max_header_count: int,
        header_timeout_s: float,
        body_timeout_s: float,
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._max_header_bytes = max_header_bytes
        self._max_header_count = max_header_count
        self._header_timeout_s = header_timeout_s
        self._body_timeout_s = body_timeout_s
        self._body_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._header_count = 0
        self._in_head = True
        self._rejection: tuple[int, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_started:
            self._reject(408, f"request body not received within {self._body_timeout_s:g} s")
        else:
            self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._reject(408, f"request head not received within {self._header_timeout_s:g} s")

    def _reject(self, status: int, message: str) -> None:
        self._rejection = (status, message)
        self.transport.write(_error_response(status, message))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._rejection is not None:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # httptools buffers an unfinished header itself: bound what a head may occupy.
        if self._in_head and self._rejection is None and self._head_bytes > self._max_header_bytes:
            self._reject(431, f"request head larger than {self._max_header_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        if self._rejection is not None:
            return  # the parser stopped because a limit was hit: that answer is already out
        super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._header_count = 0
        self._arm_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._max_header_count:
            self._reject(431, f"more than {self._max_header_count} request headers")
            raise _HeadRejected
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._disarm_head_timer()
        super().on_headers_complete()
        # Disarmed by on_message_complete: at once for a request without a body.
        self._body_timer = self.loop.call_later(self._body_timeout_s, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._disarm_body_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request on this keep-alive connection gets its own head budget; until its
        # first byte the keep-alive timeout (armed by uvicorn) bounds the idle time.
        self._in_head = True
        self._head_bytes = 0


def uvicorn_settings(cfg: RouterConfig) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` enforcing ``cfg``'s client limits."""
    protocol = partial(
        GuardedHttpProtocol,
        max_header_bytes=cfg.limits.max_header_bytes,
        max_header_count=cfg.limits.max_header_count,
        header_timeout_s=cfg.timeouts.client_header_s,
        body_timeout_s=cfg.timeouts.client_body_s + _BODY_BACKSTOP_S,
    )
    return {"http": protocol, "timeout_keep_alive": cfg.timeouts.client_keep_alive_s}
