"""The other replicas of this router, and forwarding a program's requests to the one that owns it.

Program state lives in one router process: the owner, by rendezvous hashing of the program
id over the live replicas (``shoal.router.programs.ownership``). A replica that gets a
request for a program it does not own forwards the whole request there, with the client's
own ``Authorization`` (the owner authenticates the tenant again) and
``x-shoal-forwarded: 1`` (the owner serves it whatever its own view of the membership is,
so a request is forwarded at most once). A replica is live while it answers ``/health``
(any status: ownership follows the process, not the engines' health, so all replicas
agree even when engines are down). When an owner dies its programs move to the next
replica in their rendezvous order, which starts a fresh record for each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from shoal.router.config import PeersConfig, TimeoutsConfig
from shoal.router.discovery import EndpointSource, make_source
from shoal.router.errors import (
    RouterError,
    payload_too_large,
    sse_error_event,
    upstream_failed,
    upstream_timeout,
)
from shoal.router.programs.ownership import owner_order
from shoal.router.upstream import UpstreamClient, UpstreamConnectError, UpstreamError

log = logging.getLogger("shoal.router.peers")

FORWARDED_HEADER = "x-shoal-forwarded"
PEER_SECRET_HEADER = "x-shoal-peer-secret"
POD_IP_ENV = "POD_IP"
PROGRAMS_PREFIX = "/v1/programs/"
_LOCAL_PROGRAM_PATHS = frozenset({"classes"})
"""``/v1/programs/<name>`` paths that are not a program (every replica answers them itself)."""
_HOP_BY_HOP = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
     "proxy-authorization", "proxy-authenticate", FORWARDED_HEADER, PEER_SECRET_HEADER}
)  # fmt: skip
_RELAYED_RESPONSE_HEADERS = ("content-type", "content-encoding", "retry-after")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class _PeerState:
    failures: int = 0
    alive: bool = True
    """Optimistic until probed: otherwise every replica would own everything at start-up."""


class PeerSet:
    """Membership and liveness of the router replicas; who owns a program; forwarding to it."""

    def __init__(
        self,
        cfg: PeersConfig,
        client: httpx.AsyncClient,
        upstream: UpstreamClient,
        timeouts: TimeoutsConfig,
        registry: CollectorRegistry,
        secret: str | None = None,
        source: EndpointSource | None = None,
    ) -> None:
        self.cfg = cfg
        self.self_url = _self_url(cfg)
        self._client = client
        self._upstream = upstream
        self._timeouts = timeouts
        self._secret = secret
        self._source = source or make_source(cfg.discovery())
        self._peers: dict[str, _PeerState] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = asyncio.Event()
        self.forwards = Counter(
            "shoal_router_peer_forwards", "Requests forwarded to the replica owning their program, by outcome.",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.live_replicas = Gauge(
            "shoal_router_live_replicas", "Router replicas this one counts as live (itself included).",
            registry=registry,
        )  # fmt: skip
        self.live_replicas.set_function(lambda: len(self.live()))

    # membership -----------------------------------------------------------------------------------

    def set_members(self, urls: frozenset[str]) -> None:
        """Replace the membership (from discovery); known replicas keep their liveness."""
        others = {u.rstrip("/") for u in urls} - {self.self_url}
        self._peers = {u: self._peers.get(u) or _PeerState() for u in sorted(others)}

    def live(self) -> list[str]:
        """This replica and every other one that answers."""
        return [self.self_url, *(u for u, p in self._peers.items() if p.alive)]

    def owner(self, program_id: str) -> str:
        return owner_order(program_id, self.live())[0]

    def mark_down(self, url: str) -> None:
        peer = self._peers.get(url)
        if peer is not None and peer.alive:
            log.warning("router replica %s is unreachable: its programs move to the next replica", url)
            peer.alive = False
            peer.failures = max(peer.failures, self.cfg.down_after_failures)

    def _record_probe(self, url: str, ok: bool) -> None:
        peer = self._peers.get(url)
        if peer is None:
            return
        if ok:
            if not peer.alive:
                log.info("router replica %s is back", url)
            peer.failures, peer.alive = 0, True
            return
        peer.failures += 1
        if peer.failures >= self.cfg.down_after_failures:
            self.mark_down(url)

    # trust ----------------------------------------------------------------------------------------

    def is_forwarded(self, headers: Mapping[str, str]) -> bool:
        """A request a replica forwarded here: served here whatever this replica thinks of ownership.
        With ``programs.forwardedSecretEnv`` set, only with that secret (else a client could
        choose where its program's calls are served, splitting its own program's state)."""
        if headers.get(FORWARDED_HEADER) != "1":
            return False
        if self._secret is None:
            return True
        return hmac.compare_digest(headers.get(PEER_SECRET_HEADER, "").encode(), self._secret.encode())

    def owned_elsewhere(self, program_id: str | None, headers: Mapping[str, str]) -> bool:
        """True when another live replica owns ``program_id`` and this request must go there."""
        if program_id is None or self.is_forwarded(headers):
            return False
        return self.owner(program_id) != self.self_url

    def _forward_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        out = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
        out[FORWARDED_HEADER] = "1"
        if self._secret is not None:
            out[PEER_SECRET_HEADER] = self._secret
        return out

    # forwarding: generation requests --------------------------------------------------------------

    async def forward(self, program_id: str | None, path: str, body: bytes, headers: Mapping[str, str], send: Send) -> bool:
        """Relay a generation request to the program's owner, streaming its answer back.

        Returns False when this replica must serve it itself (it owns the program, the request
        was forwarded here, or every replica ranked above this one is unreachable). Raises a
        RouterError (502/504) when the owner fails before answering; relays a mid-stream
        failure as an SSE error event, as for engines."""
        if not self.owned_elsewhere(program_id, headers):
            return False
        assert program_id is not None
        out_headers = self._forward_headers(headers)
        while (owner := self.owner(program_id)) != self.self_url:
            try:
                async with asyncio.timeout(self._timeouts.first_byte_s):
                    resp = await self._upstream.post(owner, path, body, out_headers)
            except UpstreamError as exc:
                self.forwards.labels("owner_unreachable").inc()
                log.info("forward to %s failed before an answer (%s)", owner, exc)
                self.mark_down(owner)
                if isinstance(exc, UpstreamConnectError):
                    continue  # nothing reached it: the next replica in order takes the program
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
        if not self.owned_elsewhere(program_id, headers):
            return receive
        assert program_id is not None
        try:
            body = await _read_all(receive, max_body)
        except RouterError as err:
            await err.response()(scope, _replay(b""), send)
            return None
        if body is None:
            return _replay(b"")  # the client went away; the local app sees the disconnect
        query = scope.get("query_string", b"").decode("latin-1")
        target = scope.get("raw_path", scope["path"].encode()).decode("latin-1") + (f"?{query}" if query else "")
        out_headers = self._forward_headers(headers)
        while (owner := self.owner(program_id)) != self.self_url:
            try:
                resp = await self._client.request(scope["method"], owner + target, content=body, headers=out_headers)
            except httpx.TransportError as exc:
                self.forwards.labels("owner_unreachable").inc()
                self.mark_down(owner)
                if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    continue
                error = upstream_failed(f"router replica owning the program failed: {exc}")
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
        if local.status != 200 or self.is_forwarded(headers):
            await local.replay(send)
            return
        out_headers = self._forward_headers(headers)
        others = [u for u in self.live() if u != self.self_url]
        answers = await asyncio.gather(*(self._client.get(u + PROGRAMS_PREFIX[:-1], headers=out_headers) for u in others),
                                       return_exceptions=True)  # fmt: skip
        views: dict[str, tuple[str, Any]] = {}
        for url, answer in [(self.self_url, local.json()), *zip(others, answers, strict=True)]:
            if isinstance(answer, httpx.Response):
                answer = answer.json() if answer.status_code == 200 else None
            if not isinstance(answer, dict):
                if isinstance(answer, httpx.TransportError):
                    self.mark_down(url)
                continue
            for view in answer.get("data") or []:
                program_id = view.get("id")
                # After an ownership change two replicas may hold a record: the owner's is current.
                if program_id not in views or self.owner(program_id) == url:
                    views[program_id] = (url, view)
        body = json.dumps({"object": "list", "data": [v for _, v in views.values()]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    # background -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch()), asyncio.create_task(self._poll())]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._started.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _watch(self) -> None:
        async for snapshot in self._source.watch():
            self.set_members(snapshot)
            self._started.set()

    async def _poll(self) -> None:
        await self._started.wait()
        while True:
            urls = list(self._peers)
            results = await asyncio.gather(*(self._probe(u) for u in urls))
            for url, ok in zip(urls, results, strict=True):
                self._record_probe(url, ok)
            await asyncio.sleep(self.cfg.health_interval_s)

    async def _probe(self, url: str) -> bool:
        try:
            await self._client.get(url + "/health", timeout=min(1.0, self.cfg.health_interval_s))
        except httpx.HTTPError:
            return False
        return True


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


def _self_url(cfg: PeersConfig) -> str:
    if cfg.self_url is not None:
        return cfg.self_url.rstrip("/")
    assert cfg.kubernetes is not None  # the config requires ``self`` with a static list
    ip = os.environ.get(POD_IP_ENV)
    if not ip:
        raise ValueError(f"peers.self is unset and ${POD_IP_ENV} is empty: set one (downward API status.podIP)")
    host = f"[{ip}]" if ":" in ip else ip
    return f"{cfg.kubernetes.scheme}://{host}:{cfg.kubernetes.port}"


def forwarding_secret(env_name: str | None) -> str | None:
    """The replicas' shared forwarding secret from ``programs.forwardedSecretEnv``."""
    if env_name is None:
        return None
    value = os.environ.get(env_name, "")
    if not value:
        raise ValueError(f"programs.forwardedSecretEnv names ${env_name}, which is empty or unset")
    return value


async def _read_all(receive: Receive, limit: int) -> bytes | None:
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
