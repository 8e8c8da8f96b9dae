"""Trying engines until one gives a first byte: picking, retries, the breaker, and the
in-flight accounting of the endpoint that answered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shoal.router.errors import (
    RouterError,
    all_engines_full,
    no_endpoint,
    upstream_failed,
    upstream_timeout,
)
from shoal.router.picking.runner import NoEndpointError
from shoal.router.picking.types import PickRequest
from shoal.router.pool import PoolRuntime
from shoal.router.reliability import SERVER_ERROR_STATUS, RetryPolicy
from shoal.router.services import Services
from shoal.router.upstream import UpstreamError, UpstreamResponse

log = logging.getLogger("shoal.router.proxy")


@dataclass
class Attempt:
    """The result of a successful upstream attempt, ready to relay."""

    pool: PoolRuntime
    url: str
    resp: UpstreamResponse
    first: bytes
    chunks: AsyncIterator[bytes]


class UpstreamAttempts:
    """The upstream calls of one endpoint path (``/v1/chat/completions`` or ``/v1/completions``)."""

    def __init__(self, services: Services, path: str) -> None:
        self.s = services
        self.path = path
        self.retry = RetryPolicy(services.cfg.retries)
        self.timeouts = services.cfg.timeouts

    async def first_answer(
        self,
        body: bytes,
        pool: PoolRuntime,
        pick_req: PickRequest,
        out_headers: dict[str, str],
        started: float,
        allowed: frozenset[str] | None = None,
    ) -> Attempt:
        """Try endpoints until one gives a first byte; retries only what the client has not seen.

        A 4xx is the client's own error: passed on, never retried. A 429 (engine full) is tried
        on another engine with room. A 5xx is retried elsewhere a bounded number of times (a
        poison request is not spread) and makes the router ask the engine's ``/health``, which
        alone decides whether the engine is ejected. Connect errors and timeouts count against
        the breaker and are retried.
        """
        s = self.s
        tried: set[str] = set()
        last_error: RouterError | None = None
        server_errors = 0
        engine_lost = False
        max_attempts = s.cfg.retries.max_attempts
        idle_s = self.timeouts.idle_s
        for attempt_no in range(max_attempts):
            candidates = [c for c in pool.endpoints.candidates() if c.url not in tried]
            if allowed is not None:  # a program's engines; when all of them failed it moves on
                candidates = [c for c in candidates if c.url in allowed] or candidates
            try:
                result = await pool.runner.pick(pick_req, candidates)
            except NoEndpointError as exc:
                if engine_lost and pool.cold_start is not None:  # it scaled to zero under us: hold again
                    engine_lost = False
                    await pool.cold_start.wait_ready()
                    tried.clear()
                    continue
                if last_error is not None:
                    raise last_error from None
                raise no_endpoint(str(exc)) from None
            url = result.chosen.url
            tried.add(url)
            state = pool.endpoints.get(url)
            if state is not None:
                state.inflight += 1
                state.sent_since_scrape += 1
            s.metrics.inflight.labels(pool.name).inc()
            resp: UpstreamResponse | None = None
            committed = False
            try:
                async with asyncio.timeout(self.timeouts.first_byte_s):
                    resp = await s.upstream.post(url, self.path, body, out_headers)
                    others_left = attempt_no < max_attempts - 1 and any(
                        c.healthy and c.url not in tried for c in pool.endpoints.candidates()
                    )
                    if resp.status in SERVER_ERROR_STATUS:
                        server_errors += 1
                        pool.check_health_soon(url)
                        if others_left and self.retry.retry_server_error(resp.status, server_errors):
                            s.metrics.retries.labels(pool.name, f"status_{resp.status}").inc()
                            last_error = upstream_failed(f"engine answered {resp.status}")
                            continue
                    elif others_left and self.retry.retry_full(resp.status):
                        s.metrics.retries.labels(pool.name, "full").inc()
                        last_error = all_engines_full(resp.headers.get("retry-after"))
                        continue
                    chunks = resp.chunks(idle_s)
                    first = b""
                    async for piece in chunks:
                        if piece:
                            first = piece
                            break
                s.metrics.ttft.labels(pool.name).observe(time.perf_counter() - started)
                committed = True
                return Attempt(pool, url, resp, first, chunks)
            except (TimeoutError, UpstreamError) as exc:
                pool.endpoints.record_failure(url)
                if isinstance(exc, UpstreamError):
                    pool.check_health_soon(url)
                    # In a pool that scales to zero, an engine that cannot be reached was most
                    # likely just stopped: out now, not after more requests fail on it.
                    if pool.cold_start is not None:
                        pool.endpoints.eject(url)
                        engine_lost = True
                reason = "timeout" if isinstance(exc, TimeoutError) else "connect"
                s.metrics.retries.labels(pool.name, reason).inc()
                log.info("pool %s: %s failed before the first byte (%s); %s", pool.name, url, exc,
                         "retrying" if attempt_no + 1 < max_attempts else "giving up")
                last_error = (
                    upstream_timeout(f"engine did not answer within {self.timeouts.first_byte_s} s")
                    if reason == "timeout"
                    else upstream_failed(f"engine unreachable: {exc}")
                )
            finally:
                if not committed:
                    if resp is not None:
                        resp.close()
                    self._release(pool, url)
        assert last_error is not None
        raise last_error

    def _release(self, pool: PoolRuntime, url: str) -> None:
        state = pool.endpoints.get(url)
        if state is not None:
            state.inflight -= 1
        self.s.metrics.inflight.labels(pool.name).dec()

    def finish(self, attempt: Attempt, status: int, started: float, ok: bool) -> None:
        """The answer is relayed (or abandoned): release the endpoint and record the outcome."""
        pool, url = attempt.pool, attempt.url
        self._release(pool, url)
        if ok:  # 5xx answers were handed to the health check where they happened
            pool.endpoints.record_success(url)
        self.s.metrics.requests.labels(pool.name, url, str(status)).inc()
        self.s.metrics.duration.labels(pool.name).observe(time.perf_counter() - started)
