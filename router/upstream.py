"""A small HTTP/1.1 client for the data path (requests to engines), with a keep-alive pool.

Why not httpx here: profiling the router at 64 concurrent streams showed over half of
its CPU in httpcore's connection pool, which scans every pooled connection (and polls
each socket) on every request and release. This client keeps idle connections in a
per-endpoint LIFO stack (O(1) to take and return) and decodes chunked bodies straight
off an asyncio stream. httpx still serves the low-rate control path (health, metrics,
digests, tokenizer).

It speaks only what engines need: ``POST`` with a JSON body; responses with a
Content-Length, chunked, or close-delimited body.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit


class UpstreamError(Exception):
    """The engine could not be reached or broke the connection (retryable before the first byte)."""


class UpstreamConnectError(UpstreamError):
    """No connection could be made."""


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class _Endpoint:
    __slots__ = ("host", "host_header", "idle", "port", "ssl")

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported endpoint URL {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.host_header = parts.netloc
        self.idle: list[_Conn] = []


class UpstreamResponse:
    """Status and headers are read; the body is read with ``chunks()`` or ``read()``."""

    def __init__(self, client: UpstreamClient, ep: _Endpoint, conn: _Conn, status: int, headers: dict[str, str]) -> None:
        self._client = client
        self._ep = ep
        self._conn: _Conn | None = conn
        self.status = status
        self.headers = headers
        self._done = False
        te = headers.get("transfer-encoding", "").lower()
        self._chunked = "chunked" in te
        length = headers.get("content-length")
        self._length = int(length) if length is not None and not self._chunked else None
        self._reusable = headers.get("connection", "").lower() != "close" and (
            self._chunked or self._length is not None
        )

    async def chunks(self, idle_timeout_s: float) -> AsyncIterator[bytes]:
        """Body pieces as they arrive (chunked framing removed). Raises UpstreamError or TimeoutError."""
        conn = self._conn
        if conn is None:
            return
        reader = conn.reader
        try:
            if self._chunked:
                while True:
                    async with asyncio.timeout(idle_timeout_s):
                        line = await reader.readuntil(b"\r\n")
                        size = int(line.split(b";", 1)[0], 16)
                        if size == 0:
                            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                                pass
                            break
                        data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif self._length is not None:
                remaining = self._length
                while remaining > 0:
                    async with asyncio.timeout(idle_timeout_s):
                        data = await reader.read(min(remaining, 1 << 16))
                    if not data:
                        raise UpstreamError("connection closed before the end of the body")
                    remaining -= len(data)
                    yield data
            else:
                while True:
                    async with asyncio.timeout(idle_timeout_s):
                        data = await reader.read(1 << 16)
                    if not data:
                        break
                    yield data
            self._done = True
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError) as exc:
            raise UpstreamError(f"engine connection broke mid-body: {type(exc).__name__}") from exc

    async def read(self, idle_timeout_s: float) -> bytes:
        """The whole body."""
        return b"".join([piece async for piece in self.chunks(idle_timeout_s)])

    def close(self) -> None:
        """Return the connection to the pool if the body was fully read, else drop it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._reusable:
            self._client._release(self._ep, conn)
        else:
            conn.close()


class UpstreamClient:
    """Keep-alive connections per endpoint; ``post`` returns once response headers arrive."""

    def __init__(self, connect_timeout_s: float, max_idle_per_endpoint: int = 1024, keepalive_s: float = 30.0) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle_per_endpoint
        self._keepalive_s = keepalive_s
        self._endpoints: dict[str, _Endpoint] = {}

    def _endpoint(self, base_url: str) -> _Endpoint:
        ep = self._endpoints.get(base_url)
        if ep is None:
            ep = self._endpoints[base_url] = _Endpoint(base_url)
        return ep

    def _take_idle(self, ep: _Endpoint) -> _Conn | None:
        horizon = time.monotonic() - self._keepalive_s
        while ep.idle:
            conn = ep.idle.pop()
            if conn.idle_since >= horizon and conn.usable():
                return conn
            conn.close()
        return None

    def _release(self, ep: _Endpoint, conn: _Conn) -> None:
        if len(ep.idle) >= self._max_idle or not conn.usable():
            conn.close()
            return
        conn.idle_since = time.monotonic()
        ep.idle.append(conn)

    async def _connect(self, ep: _Endpoint) -> _Conn:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                reader, writer = await asyncio.open_connection(ep.host, ep.port, ssl=ep.ssl, limit=1 << 20)
        except TimeoutError as exc:
            raise UpstreamConnectError(f"connect to {ep.host_header} timed out") from exc
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {ep.host_header}: {exc.strerror or exc}") from exc
        return _Conn(reader, writer)

    async def post(self, base_url: str, path: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Send a POST and wait for the status line and headers (bound the wait with asyncio.timeout)."""
        ep = self._endpoint(base_url)
        head = [f"POST {path} HTTP/1.1\r\nhost: {ep.host_header}\r\ncontent-length: {len(body)}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in headers.items()]
        head.append("\r\n")
        payload = "".join(head).encode("latin-1") + body
        conn = self._take_idle(ep)
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(ep)
            try:
                conn.writer.write(payload)
                await conn.writer.drain()
                status, resp_headers = await self._read_head(conn.reader)
                return UpstreamResponse(self, ep, conn, status, resp_headers)
            except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as exc:
                conn.close()
                # A kept-alive connection the engine closed meanwhile fails before any byte
                # of the answer: safe to send again, once, on a fresh connection.
                if reused and isinstance(exc, asyncio.IncompleteReadError | ConnectionError) and not _partial(exc):
                    conn, reused = None, False
                    continue
                raise UpstreamError(f"engine connection failed: {type(exc).__name__}") from exc
            except BaseException:
                conn.close()
                raise

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    async def aclose(self) -> None:
        for ep in self._endpoints.values():
            for conn in ep.idle:
                conn.close()
            ep.idle.clear()


def _partial(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.IncompleteReadError) and bool(exc.partial)
