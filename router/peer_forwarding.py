"""Forwarding a program's requests to the router replica that owns it (see ``shoal.router.peers``).

Generation requests go over the engines' data path (aiohttp), streams relayed chunk by chunk;
``/v1/programs/{id}[/...]`` calls over the control path; ``GET /v1/programs`` is answered
with the tenant's programs of every live replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote

import httpx
from prometheus_client import CollectorRegistry, Counter

from shoal.router.config import TimeoutsConfig
from shoal.router.errors import (
    RouterError,
    sse_error_event,
    upstream_failed,
    upstream_timeout,
)
from shoal.router.peers import PeerSet
from shoal.router.request_body import read_body
from shoal.router.upstream import UpstreamClient, UpstreamConnectError, UpstreamError

log = logging.getLogger("shoal.router.peers")

PROGRAMS_PREFIX = "/v1/programs/"
_LOCAL_PROGRAM_PATHS = frozenset({"classes"})
"""``/v1/programs/<name>`` paths that are not a program (every replica answers them itself)."""
_RELAYED_RESPONSE_HEADERS = ("content-type", "content-encoding", "retry-after")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class PeerForwarder:
    """The request path's view of the replicas: forward what another replica owns."""

    def __init__(
        self,
        peers: PeerSet,
        client: httpx.AsyncClient,
        upstream: UpstreamClient,
        timeouts: TimeoutsConfig,
        registry: CollectorRegistry,
        program_hold_s: float = 0.0,
    ) -> None:
        self.peers = peers
        self._client = client
        self._upstream = upstream
        self._timeouts = timeouts
        # The owner answers once the engine's first byte arrives, after holding the call as
        # long as the program scheduler makes it wait (at most its aging bound).
        self._answer_s = timeouts.first_byte_s + program_hold_s
        self.forwards = Counter(
            "shoal_router_peer_forwards", "Requests forwarded to the replica owning their program, by outcome.",
            ["outcome"], registry=registry,
        )  # fmt: skip

    def owned_elsewhere(self, program_id: str | None, headers: Mapping[str, str]) -> bool:
        """True when another live replica owns ``program_id`` and this request must go there."""
        return self.peers.owned_elsewhere(program_id, headers)

    async def start(self) -> None:
        await self.peers.start()

    async def stop(self) -> None:
        await self.peers.stop()

    # forwarding: generation requests --------------------------------------------------------------

    async def forward(
        self, program_id: str | None, path: str, body: bytes, headers: Mapping[str, str], send: Send,
        client_addr: str | None = None,
    ) -> bool:
        """Relay a generation request to the program's owner, streaming its answer back.

        Returns False when this replica must serve it itself (it owns the program, the request
        was forwarded here, or every replica ranked above this one is unreachable). Raises a
        RouterError (502/504) when the owner fails before answering; relays a mid-stream
        failure as an SSE error event, as for engines."""
        if not self.peers.owned_elsewhere(program_id, headers):
            return False
        assert program_id is not None
        out_headers = self.peers.forward_headers(headers, client_addr)
        while (owner := self.peers.owner(program_id)) != self.peers.self_url:
            try:
                async with asyncio.timeout(self._answer_s):
                    resp = await self._upstream.post(owner, path, body, out_headers)
            except UpstreamConnectError as exc:
                self.forwards.labels("owner_unreachable").inc()
                log.info("router replica %s unreachable (%s)", owner, exc)
                self.peers.mark_down(owner)
                continue  # nothing reached it: the next replica in order takes the program
            except UpstreamError as exc:  # it may have started on the call: not sent twice
                self.forwards.labels("failed").inc()
                raise upstream_failed(f"router replica owning the program failed: {exc}") from None
            except TimeoutError:
                self.forwards.labels("timeout").inc()
                raise upstream_timeout("router replica owning the program did not answer in time") from None
            self.forwards.labels("forwarded").inc()
            await self._relay(resp, send)
            return True
        return False

    async def _relay(self, resp: Any, send: Send) -> None:
        headers = [(k.encode("latin-1"), resp.headers[k].encode("latin-1"))
                   for k in _RELAYED_RESPONSE_HEADERS if resp.headers.get(k)]  # fmt: skip
        streaming = resp.headers.get("content-type", "").startswith("text/event-stream")
        try:
            if not streaming:  # whole body first: a broken connection is still a clean 502
                try:
                    body = await resp.read(self._timeouts.idle_s)
                except (TimeoutError, UpstreamError) as exc:
                    raise upstream_failed(f"router replica owning the program failed mid-response: {exc}") from None
                await send({"type": "http.response.start", "status": resp.status, "headers": headers})
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            try:
                async for chunk in resp.chunks(self._timeouts.idle_s):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (TimeoutError, UpstreamError):
                await send({"type": "http.response.body", "body": sse_error_event("router replica lost"),
                            "more_body": True})  # fmt: skip
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            resp.close()

    # forwarding: /v1/programs/{id}/... -------------------------------------------------------------

    async def forward_program_route(self, scope: Message, receive: Receive, send: Send, max_body: int) -> Receive | None:
        """Forward a ``/v1/programs/{id}[/...]`` call to the program's owner.

        Returns None when it was forwarded and answered, else the ``receive`` the local app
        must use (the body may have been read already)."""
        program_id = program_id_of_path(scope["path"])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self.peers.owned_elsewhere(program_id, headers):
            return receive
        assert program_id is not None
        try:
            body = await read_body(receive, max_body)
        except RouterError as err:
            await err.response()(scope, _replay(b""), send)
            return None
        if body is None:
            return _replay(b"")  # the client went away; the local app sees the disconnect
        query = scope.get("query_string", b"").decode("latin-1")
        target = scope.get("raw_path", scope["path"].encode()).decode("latin-1") + (f"?{query}" if query else "")
        client = scope.get("client")
        out_headers = self.peers.forward_headers(headers, client[0] if client else None)
        # A tool call runs as long as its tool: bounded by the whole-request time, not the idle one.
        timeout = httpx.Timeout(self._timeouts.total_s, connect=self._timeouts.connect_s)
        while (owner := self.peers.owner(program_id)) != self.peers.self_url:
            try:
                resp = await self._client.request(
                    scope["method"], owner + target, content=body, headers=out_headers, timeout=timeout
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                self.forwards.labels("owner_unreachable").inc()
                log.info("router replica %s unreachable (%s)", owner, exc)
                self.peers.mark_down(owner)
                continue
            except httpx.TransportError as exc:
                self.forwards.labels("failed").inc()
                error = upstream_failed(f"router replica owning the program failed: {exc!r}")
                await error.response()(scope, _replay(b""), send)
                return None
            self.forwards.labels("forwarded").inc()
            relayed = [(k.encode("latin-1"), resp.headers[k].encode("latin-1"))
                       for k in _RELAYED_RESPONSE_HEADERS if resp.headers.get(k)]  # fmt: skip
            await send({"type": "http.response.start", "status": resp.status_code, "headers": relayed})
            await send({"type": "http.response.body", "body": resp.content, "more_body": False})
            return None
        return _replay(body)

    # GET /v1/programs: every replica's programs -----------------------------------------------------

    async def list_programs(self, scope: Message, receive: Receive, send: Send, local_app: Any) -> None:
        """Answer ``GET /v1/programs`` with the tenant's programs on every live replica (each is
        asked with the client's own credentials); a program is shown as its owner has it."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        local = _Captured()
        await local_app(scope, receive, local.send)
        if local.status != 200 or self.peers.is_forwarded(headers):
            await local.replay(send)
            return
        out_headers = self.peers.forward_headers(headers)
        others = [u for u in self.peers.live() if u != self.peers.self_url]
        answers = await asyncio.gather(*(self._client.get(u + PROGRAMS_PREFIX[:-1], headers=out_headers) for u in others),
                                       return_exceptions=True)  # fmt: skip
        views: dict[str, tuple[str, Any]] = {}
        for url, answer in [(self.peers.self_url, local.json()), *zip(others, answers, strict=True)]:
            if isinstance(answer, httpx.Response):
                answer = answer.json() if answer.status_code == 200 else None
            if not isinstance(answer, dict):
                if isinstance(answer, httpx.ConnectError | httpx.ConnectTimeout):
                    self.peers.mark_down(url)
                continue
            for view in answer.get("data") or []:
                program_id = view.get("id")
                # After an ownership change two replicas may hold a record: the owner's is current.
                if program_id not in views or self.peers.owner(program_id) == url:
                    views[program_id] = (url, view)
        body = json.dumps({"object": "list", "data": [v for _, v in views.values()]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def program_id_of_path(path: str) -> str | None:
    """The program id of ``/v1/programs/{id}``, ``.../{id}/release`` or ``.../{id}/tools/{name}``
    (ids may contain ``/``); None for other paths."""
    if not path.startswith(PROGRAMS_PREFIX):
        return None
    rest = path[len(PROGRAMS_PREFIX):]
    if "/tools/" in rest:
        rest = rest.rsplit("/tools/", 1)[0]
    elif rest.endswith("/release"):
        rest = rest[: -len("/release")]
    rest = unquote(rest)
    return rest if rest and rest not in _LOCAL_PROGRAM_PATHS else None


class _Captured:
    """An ASGI response kept in memory (the local half of a merged answer)."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status, self.headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    async def replay(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # like a client that stays connected
        return {"type": "http.disconnect"}

    return receive
