"""The forwarding path: auth, limits, routing, picking, and the upstream call with retries.

Written as a plain ASGI endpoint (not a FastAPI handler) for two reasons: the hot path
skips the framework's per-request work, and it owns the connection's ``receive`` so a
client disconnect cancels the upstream request at once, not at the next chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import httpx

from shoal.router.auth import KeyStore, RateLimiter
from shoal.router.config import RouterConfig
from shoal.router.errors import (
    RouterError,
    all_engines_full,
    bad_request,
    body_timeout,
    no_endpoint,
    payload_too_large,
    sse_error_event,
    upstream_failed,
    upstream_timeout,
)
from shoal.router.metrics import RouterMetrics
from shoal.router.openai_request import PROGRAM_HEADER, SESSION_HEADER, Kind, ParsedRequest, parse_request
from shoal.router.peer_forwarding import PeerForwarder
from shoal.router.picking.runner import NoEndpointError
from shoal.router.picking.types import PickRequest
from shoal.router.pool import PoolRuntime
from shoal.router.programs.gateway import CallTicket, ProgramGateway
from shoal.router.programs.response import ResponseObserver
from shoal.router.reliability import SERVER_ERROR_STATUS, RetryPolicy
from shoal.router.request_body import read_body
from shoal.router.routes import RouteTable
from shoal.router.tenancy import PRIORITY_HEADER, SALT_HEADER, TENANT_HEADER, Tenancy
from shoal.router.tokenization import PromptDigest
from shoal.router.upstream import UpstreamClient, UpstreamError, UpstreamResponse

log = logging.getLogger("shoal.router.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_FORWARD_HEADERS = ("accept", "x-request-id", PROGRAM_HEADER, SESSION_HEADER, "traceparent", "tracestate")
_JSON = [(b"content-type", b"application/json")]
_DEFAULT_MAX_TOKENS = 16
_INLINE_HASH_BYTES = 2048
"""Bodies up to this size are hashed on the event loop: a thread hop would cost more than the work."""


@dataclass
class Services:
    """What the proxy needs, built once per app."""

    cfg: RouterConfig
    client: httpx.AsyncClient
    """Control path: health, metrics, digests, tokenizer."""
    upstream: UpstreamClient
    """Data path: generation requests."""
    pools: dict[str, PoolRuntime]
    routes: RouteTable
    keys: KeyStore
    limiter: RateLimiter
    metrics: RouterMetrics
    tenancy: Tenancy
    """Tenant of a request and its cache salt."""
    upstream_auth: dict[str, str]
    """The router's own credential, sent on every upstream request."""
    hashing: ThreadPoolExecutor
    """Prompt templating + tokenization for prefix hashing runs here, off the event loop."""
    programs: ProgramGateway | None = None
    """Agent-program scheduling (requests with a program id); None: every request is one-off."""
    peers: PeerForwarder | None = None
    """The other router replicas (program ownership); None: this router owns every program."""


class _ClientGone(Exception):
    pass


class _Attempt:
    """The result of a successful upstream attempt, ready to relay."""

    def __init__(
        self, pool: PoolRuntime, url: str, resp: UpstreamResponse, first: bytes, chunks: AsyncIterator[bytes]
    ) -> None:
        self.pool = pool
        self.url = url
        self.resp = resp
        self.first = first
        self.chunks = chunks


async def _read_body(receive: Receive, headers: dict[str, str], limit: int, timeout_s: float) -> bytes:
    """The whole request body; 413 above ``limit``, 408 when it does not arrive within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_body_parts(receive, headers, limit)
    except TimeoutError:
        raise body_timeout(timeout_s) from None


async def _read_body_parts(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise payload_too_large(limit)
        except ValueError:
            raise bad_request("invalid Content-Length header") from None
    body = await read_body(receive, limit)
    if body is None:
        raise _ClientGone
    return body


async def _send_json(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON + (extra or [])})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ProxyEndpoint:
    """ASGI app for ``POST /v1/chat/completions`` or ``POST /v1/completions``."""

    def __init__(self, services: Services, kind: Kind, path: str) -> None:
        self.s = services
        self.kind = kind
        self.path = path
        self.retry = RetryPolicy(services.cfg.retries)
        self.timeouts = services.cfg.timeouts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        task = asyncio.current_task()
        assert task is not None
        watcher: asyncio.Task[None] | None = None
        gone = complete = False

        async def watch_disconnect() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            if not complete:  # the server also reports "disconnect" once the response is sent
                gone = True
                task.cancel()

        async def tracked_send(message: Message) -> None:
            nonlocal complete
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        try:
            parsed, key_name = await self._admit(scope, receive, headers)
            watcher = asyncio.create_task(watch_disconnect())
            peers = self.s.peers
            client = scope.get("client")
            if peers is not None and await peers.forward(
                parsed.program_id, self.path, parsed.raw, headers, tracked_send, client[0] if client else None
            ):
                return  # another replica owns this program (its state lives there)
            await self._serve(parsed, key_name, headers, tracked_send, started)
        except RouterError as err:
            self.s.metrics.rejected.labels(str(err.status)).inc()
            extra = [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
            await _send_json(send, err.status, json.dumps(err.body()).encode(), extra)
        except (_ClientGone, OSError):
            pass  # the client went away: nobody to answer
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
        except Exception:
            log.exception("unexpected error while proxying")
            with contextlib.suppress(Exception):
                body = RouterError(500, "internal router error", "server_error").body()
                await _send_json(send, 500, json.dumps(body).encode())
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _admit(self, scope: Scope, receive: Receive, headers: dict[str, str]) -> tuple[ParsedRequest, str | None]:
        """Auth, body limit, parsing and rate limits: everything before an engine is involved.
        Returns the request and the caller's key name (None with auth off)."""
        s = self.s
        name = s.keys.authenticate(headers)
        raw = await _read_body(receive, headers, s.cfg.limits.max_body_bytes, self.timeouts.client_body_s)
        parsed = parse_request(self.kind, raw, headers)
        if s.peers is not None and s.peers.owned_elsewhere(parsed.program_id, headers):
            return parsed, name  # the owning replica charges the rate limit
        client = scope.get("client")
        forwarded_for = s.peers.peers.client_addr(headers) if s.peers is not None else None
        key = name if name is not None else "addr:" + (forwarded_for or (client[0] if client else "unknown"))
        s.limiter.check(key, tokens=len(raw) // 4 + (parsed.max_tokens or _DEFAULT_MAX_TOKENS))
        return parsed, name

    def _priority(self, parsed: ParsedRequest, key_name: str | None) -> int | None:
        """The body's ``priority`` when this key may set one (``auth.priorityKeys``), else None."""
        value = parsed.body.get("priority")
        if key_name is None or key_name not in self.s.cfg.auth.priority_keys:
            return None
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise bad_request("'priority' must be an integer", "priority")
        return value

    def _upstream_body(self, parsed: ParsedRequest, forward_model: str) -> bytes:
        body = parsed.body
        extra = body.get("extra_body")
        untrusted_priority = "priority" in body or (isinstance(extra, dict) and "priority" in extra)
        if forward_model == parsed.model and parsed.raw and not untrusted_priority:
            return parsed.raw
        # Priority travels in the trusted header only (set by _upstream_headers when allowed).
        out = {k: v for k, v in body.items() if k != "priority"}
        if isinstance(extra, dict) and "priority" in extra:
            out["extra_body"] = {k: v for k, v in extra.items() if k != "priority"}
        out["model"] = forward_model
        return json.dumps(out).encode()

    def _upstream_headers(self, headers: dict[str, str], tenant: str, priority: int | None) -> dict[str, str]:
        out = {"content-type": "application/json", **self.s.upstream_auth}
        for name in _FORWARD_HEADERS:
            value = headers.get(name)
            if value is not None:
                out[name] = value
        # Trusted headers come from the router only: a client's own x-shoal-tenant etc. never pass.
        out[TENANT_HEADER] = tenant
        out[SALT_HEADER] = self.s.tenancy.salt(tenant)
        if priority is not None:
            out[PRIORITY_HEADER] = str(priority)
        return out

    async def _digest(self, pool: PoolRuntime, parsed: ParsedRequest, salt: str) -> PromptDigest:
        """Block hashes of the prompt; templating and tokenizing a large one runs off the event loop."""
        limit = self.s.cfg.limits.max_tokenized_prompt_bytes
        hasher = pool.hasher
        if len(parsed.raw) <= _INLINE_HASH_BYTES:
            return hasher.digest(parsed, salt, limit)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.s.hashing, hasher.digest, parsed, salt, limit)

    async def _serve(
        self, parsed: ParsedRequest, key_name: str | None, headers: dict[str, str], send: Send, started: float
    ) -> None:
        s = self.s
        tenant = s.tenancy.tenant(key_name, headers)
        salt = s.tenancy.salt(tenant)
        priority = self._priority(parsed, key_name)
        resolved = s.routes.resolve(parsed.model, parsed.prompt_text, parsed.program_id or parsed.session_id)
        pool = s.pools[resolved.pool]
        if pool.cold_start is not None:  # a pool at zero: wait for its first engine
            await pool.cold_start.wait_ready()
        programs = s.programs if parsed.program_id is not None else None
        digest = await self._digest(pool, parsed, salt) if pool.needs_hashes or programs else None
        ticket = await programs.before_call(parsed, headers, tenant, pool, digest) if programs else None
        if ticket is not None:
            parsed = replace(parsed, body=ticket.upstream_body(parsed.body), raw=b"")
            priority = ticket.priority if priority is None else priority
        pick_req = PickRequest(
            request_id=headers.get("x-request-id") or uuid.uuid4().hex,
            model=resolved.forward_model,
            pool=pool.name,
            block_hashes=digest.block_hashes if digest else (),
            prompt_tokens=digest.num_tokens if digest else 0,
            program_id=parsed.program_id,
            session_id=parsed.session_id,
            content_key=digest.content_key if digest else "",
        )
        out_headers = self._upstream_headers(headers, tenant, priority)
        try:
            allowed = ticket.engines if ticket is not None else None
            attempt = await self._attempts(parsed, resolved.forward_model, pool, pick_req, out_headers, started, allowed)
            observer = self._program_routed(ticket, attempt.url)
            if parsed.stream and attempt.resp.status == 200:
                await self._relay_stream(attempt, send, started, observer)
            else:
                await self._relay_body(attempt, send, started, observer)
        finally:
            if ticket is not None and s.programs is not None:
                s.programs.after_call(ticket)

    def _program_routed(self, ticket: CallTicket | None, url: str) -> ResponseObserver | None:
        if ticket is None or self.s.programs is None:
            return None
        self.s.programs.routed(ticket, url)
        return ticket.observer

    async def _attempts(
        self,
        parsed: ParsedRequest,
        forward_model: str,
        pool: PoolRuntime,
        pick_req: PickRequest,
        out_headers: dict[str, str],
        started: float,
        allowed: frozenset[str] | None = None,
    ) -> _Attempt:
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
        max_attempts = s.cfg.retries.max_attempts
        body = self._upstream_body(parsed, forward_model)
        idle_s = self.timeouts.idle_s
        for attempt_no in range(max_attempts):
            candidates = [c for c in pool.endpoints.candidates() if c.url not in tried]
            if allowed is not None:  # a program's engines; when all of them failed it moves on
                candidates = [c for c in candidates if c.url in allowed] or candidates
            try:
                result = await pool.runner.pick(pick_req, candidates)
            except NoEndpointError as exc:
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
                return _Attempt(pool, url, resp, first, chunks)
            except (TimeoutError, UpstreamError) as exc:
                pool.endpoints.record_failure(url)
                if isinstance(exc, UpstreamError):
                    pool.check_health_soon(url)
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

    def _finish(self, attempt: _Attempt, status: int, started: float, ok: bool) -> None:
        pool, url = attempt.pool, attempt.url
        self._release(pool, url)
        if ok:  # 5xx answers were handed to the health check where they happened
            pool.endpoints.record_success(url)
        self.s.metrics.requests.labels(pool.name, url, str(status)).inc()
        self.s.metrics.duration.labels(pool.name).observe(time.perf_counter() - started)

    @staticmethod
    def _response_headers(resp: UpstreamResponse) -> list[tuple[bytes, bytes]]:
        out = [(b"content-type", resp.headers.get("content-type", "application/json").encode("latin-1"))]
        for name in ("content-encoding", "retry-after"):
            value = resp.headers.get(name)
            if value:
                out.append((name.encode("latin-1"), value.encode("latin-1")))
        return out

    async def _relay_body(
        self, attempt: _Attempt, send: Send, started: float, observer: ResponseObserver | None = None
    ) -> None:
        resp = attempt.resp
        try:
            remaining = max(0.001, self.timeouts.total_s - (time.perf_counter() - started))
            async with asyncio.timeout(remaining):
                rest = [chunk async for chunk in attempt.chunks]
            body = attempt.first + b"".join(rest)
        except (TimeoutError, UpstreamError) as exc:
            resp.close()
            if isinstance(exc, UpstreamError):
                attempt.pool.endpoints.record_failure(attempt.url)
            err = upstream_failed(f"engine failed mid-response: {exc or type(exc).__name__}")
            self._finish(attempt, err.status, started, False)
            raise err from None
        except BaseException:
            resp.close()
            self._finish(attempt, 499, started, False)
            raise
        resp.close()
        self._finish(attempt, resp.status, started, resp.status < 500)
        if observer is not None and resp.status == 200:
            observer.feed_body(body)
        await send({"type": "http.response.start", "status": resp.status, "headers": self._response_headers(resp)})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _relay_stream(
        self, attempt: _Attempt, send: Send, started: float, observer: ResponseObserver | None = None
    ) -> None:
        """Pass SSE chunks through as they arrive; an upstream failure ends the stream with an error event."""
        resp = attempt.resp
        deadline = started + self.timeouts.total_s
        status, ok = 200, True
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self._response_headers(resp)})
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
            self.s.metrics.client_disconnects.labels(attempt.pool.name).inc()
            raise
        finally:
            resp.close()
            self._finish(attempt, status, started, ok)
