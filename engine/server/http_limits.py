"""Connection-level limits uvicorn does not enforce: request-head size, header count, head read time.

They act before the app (and so before authentication) sees a request, in the HTTP protocol
itself: a huge or never-finished request head is answered (431 / 408, OpenAI error shape)
and the connection closed, so neither memory nor a connection is held by it. The body read
deadline is in the request guard middleware (it needs the request in flight); idle
keep-alive connections are closed by uvicorn's ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shoal.engine.server.errors import APIError
from shoal.engine.server.settings import ServerSettings

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus head size/count limits and a head read deadline."""

    max_head_bytes = 64 * 1024
    max_header_count = 100
    head_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_started = False
        self._head_bytes = 0
        self._header_count = 0
        self._heads_completed = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._rejected = False

    # ---- timers

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if not self._head_started:
            # nothing of a request arrived: close like an idle keep-alive connection (no 408 a
            # client could mistake for the answer to a request it is sending right now)
            self.transport.close()
            return
        self._reject(408, f"The request head was not received within {self.head_timeout_s:g} seconds.",
                     "request_timeout")  # fmt: skip

    # ---- parsing

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        was_in_head, heads_completed = self._in_head, self._heads_completed
        super().data_received(data)
        # httptools buffers an unfinished header whole: count what arrives while no head completes
        if was_in_head and self._in_head and self._heads_completed == heads_completed and not self._rejected:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._reject_head_size()

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_started = True
        self._head_bytes = 0
        self._header_count = 0
        self._arm_head_timer()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._rejected:
            return
        self._head_bytes += len(name) + len(value) + 4
        self._header_count += 1
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._rejected:
            return
        self._in_head = False
        self._head_started = False
        self._heads_completed += 1
        self._cancel_head_timer()
        if self._header_count > self.max_header_count:
            self._reject(431, f"Too many request headers (at most {self.max_header_count}).",
                         "request_header_fields_too_large")  # fmt: skip
            return
        if self._head_bytes > self.max_head_bytes:
            self._reject_head_size()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._rejected:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._rejected:
            super().on_message_complete()
            self._in_head = True  # whatever arrives next starts a new request head

    # ---- rejection

    def _reject_head_size(self) -> None:
        self._reject(431, f"The request line and headers exceed {self.max_head_bytes} bytes.",
                     "request_header_fields_too_large")  # fmt: skip

    def _reject(self, status: int, message: str, code: str) -> None:
        self._rejected = True
        self._in_head = False
        self._cancel_head_timer()
        body = json.dumps(APIError(status, message, code=code).body()).encode()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n" % (status, _REASONS[status])
        head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        self.transport.write(head + body)
        self.transport.close()


def limited_protocol(settings: ServerSettings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class with ``settings``' limits (uvicorn instantiates it per connection)."""
    return type(
        "ShoalHttpProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "max_head_bytes": settings.max_header_bytes,
            "max_header_count": settings.max_header_count,
            "head_timeout_s": settings.header_timeout_s,
        },
    )


def uvicorn_config(app: Any, settings: ServerSettings, **kwargs: Any) -> uvicorn.Config:
    """uvicorn settings for an engine app: the limited protocol and the keep-alive limit."""
    kwargs.setdefault("timeout_keep_alive", settings.keep_alive_s)
    return uvicorn.Config(app, http=limited_protocol(settings), **kwargs)
