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
from dataclasses import replace

from shoal.router.asgi import Message, Receive, Scope, Send, send_json
from shoal.router.errors import RouterError, bad_request, body_timeout, payload_too_large
from shoal.router.openai_request import Kind, ParsedRequest, parse_request
from shoal.router.picking.types import PickRequest
from shoal.router.pool import PoolRuntime
from shoal.router.programs.gateway import CallTicket
from shoal.router.programs.response import ResponseObserver
from shoal.router.relay import relay_body, relay_stream
from shoal.router.request_body import read_body
from shoal.router.services import Services
from shoal.router.tokenization import PromptDigest
from shoal.router.upstream_attempts import UpstreamAttempts
from shoal.router.upstream_request import trusted_priority, upstream_body, upstream_headers

log = logging.getLogger("shoal.router.proxy")

_DEFAULT_MAX_TOKENS = 16
_INLINE_HASH_BYTES = 2048
"""Bodies up to this size are hashed on the event loop: a thread hop would cost more than the work."""


class _ClientGone(Exception):
    pass


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


class ProxyEndpoint:
    """ASGI app for ``POST /v1/chat/completions`` or ``POST /v1/completions``."""

    def __init__(self, services: Services, kind: Kind, path: str) -> None:
        self.s = services
        self.kind = kind
        self.path = path
        self.attempts = UpstreamAttempts(services, path)
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
            await send_json(send, err.status, json.dumps(err.body()).encode(), extra)
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
                await send_json(send, 500, json.dumps(body).encode())
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
        priority = trusted_priority(parsed, key_name, s.cfg.auth.priority_keys)
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
        out_headers = upstream_headers(headers, s.upstream_auth, tenant, salt, priority)
        try:
            allowed = ticket.engines if ticket is not None else None
            body = upstream_body(parsed, resolved.forward_model)
            attempt = await self.attempts.first_answer(body, pool, pick_req, out_headers, started, allowed)
            observer = self._program_routed(ticket, attempt.url)
            if parsed.stream and attempt.resp.status == 200:
                await relay_stream(self.attempts, attempt, send, started, observer)
            else:
                await relay_body(self.attempts, attempt, send, started, observer)
        finally:
            if ticket is not None and s.programs is not None:
                s.programs.after_call(ticket)

    def _program_routed(self, ticket: CallTicket | None, url: str) -> ResponseObserver | None:
        if ticket is None or self.s.programs is None:
            return None
        self.s.programs.routed(ticket, url)
        return ticket.observer
