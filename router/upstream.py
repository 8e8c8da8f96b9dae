"""The data-path HTTP client (requests to engines): aiohttp with a keep-alive pool.

aiohttp rather than httpx here: at 64 concurrent streams httpcore's pool bookkeeping
took over half the router's CPU (it scans every pooled connection per request), while
aiohttp's connector hands out idle connections in O(1). httpx still serves the low-rate
control path (health, metrics, digests, tokenizer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import aiohttp


class UpstreamError(Exception):
    """The engine could not be reached or broke the connection (retryable before the first byte)."""


class UpstreamConnectError(UpstreamError):
    """No connection could be made."""


class UpstreamResponse:
    """Status and headers are read; the body is read with ``chunks()`` or ``read()``."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = {name.lower(): value for name, value in resp.headers.items()}
        self._done = False

    async def chunks(self, idle_timeout_s: float) -> AsyncIterator[bytes]:
        """Body pieces as they arrive (transfer framing removed). Raises UpstreamError or TimeoutError."""
        content = self._resp.content
        try:
            while True:
                async with asyncio.timeout(idle_timeout_s):
                    data = await content.readany()
                if not data:
                    break
                yield data
            self._done = True
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamError(f"engine connection broke mid-body: {type(exc).__name__}") from exc

    async def read(self, idle_timeout_s: float) -> bytes:
        """The whole body."""
        return b"".join([piece async for piece in self.chunks(idle_timeout_s)])

    def close(self) -> None:
        """Return the connection to the pool if the body was fully read, else drop it."""
        if self._done:
            self._resp.release()
        else:
            self._resp.close()


class UpstreamClient:
    """Keep-alive connections to engines; ``post`` returns once response headers arrive."""

    def __init__(self, connect_timeout_s: float, max_idle_per_endpoint: int = 1024, keepalive_s: float = 30.0) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._max_idle = max_idle_per_endpoint
        self._keepalive_s = keepalive_s
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # created lazily: a ClientSession binds to the running event loop
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=self._max_idle, keepalive_timeout=self._keepalive_s
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def post(self, base_url: str, path: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Send a POST and wait for the status line and headers (bound the wait with asyncio.timeout)."""
        session = self._get_session()
        url = base_url.rstrip("/") + path
        for attempt in range(2):
            try:
                resp = await session.post(url, data=body, headers=dict(headers))
                return UpstreamResponse(resp)
            except aiohttp.ServerDisconnectedError as exc:
                # a kept-alive connection the engine had closed: send again once on a fresh one
                if attempt == 0:
                    continue
                raise UpstreamError(f"engine connection failed: {type(exc).__name__}") from exc
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                raise UpstreamConnectError(f"cannot connect to {base_url}: {exc}") from exc
            except (aiohttp.ClientError, ConnectionError, ValueError) as exc:
                raise UpstreamError(f"engine connection failed: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
