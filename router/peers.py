"""The other replicas of this router: membership, liveness, and which one owns a program.

Program state lives in one router process: the owner, by rendezvous hashing of the program
id over the live replicas (``shoal.router.programs.ownership``). A replica that gets a
request for a program it does not own forwards the whole request there, with the client's
own ``Authorization`` (the owner authenticates the tenant again) and
``x-shoal-forwarded: 1`` (the owner serves it whatever its own view of the membership is,
so a request is forwarded at most once). A replica is live while it answers ``/health``
(any status: ownership follows the process, not the engines' health, so all replicas
agree even when engines are down). When an owner dies its programs move to the next
replica in their rendezvous order, which starts a fresh record for each of them.
Forwarding itself is ``shoal.router.peer_forwarding``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, Gauge

from shoal.router.config import PeersConfig
from shoal.router.discovery import EndpointSource, make_source
from shoal.router.programs.ownership import owner_order

log = logging.getLogger("shoal.router.peers")

FORWARDED_HEADER = "x-shoal-forwarded"
PEER_SECRET_HEADER = "x-shoal-peer-secret"
CLIENT_ADDR_HEADER = "x-shoal-client-addr"
"""The client's address, for the owner's per-address rate limit (trusted only with the secret)."""
POD_IP_ENV = "POD_IP"
_HOP_BY_HOP = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
     "proxy-authorization", "proxy-authenticate", FORWARDED_HEADER, PEER_SECRET_HEADER, CLIENT_ADDR_HEADER}
)  # fmt: skip


@dataclass
class _PeerState:
    failures: int = 0
    alive: bool = True
    """Optimistic until probed: otherwise every replica would own everything at start-up."""


class PeerSet:
    """Membership and liveness of the router replicas; who owns a program; which forwarded
    requests to trust."""

    def __init__(
        self,
        cfg: PeersConfig,
        client: httpx.AsyncClient,
        registry: CollectorRegistry,
        secret: str | None = None,
        source: EndpointSource | None = None,
    ) -> None:
        self.cfg = cfg
        self.self_url = _self_url(cfg)
        self._client = client
        self._secret = secret
        self._source = source or make_source(cfg.discovery())
        self._peers: dict[str, _PeerState] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = asyncio.Event()
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

    def forward_headers(self, headers: Mapping[str, str], client_addr: str | None = None) -> dict[str, str]:
        """The client's headers for the owner: hop-by-hop ones dropped, the forwarding mark added."""
        out = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
        out[FORWARDED_HEADER] = "1"
        if self._secret is not None:
            out[PEER_SECRET_HEADER] = self._secret
            if client_addr:
                out[CLIENT_ADDR_HEADER] = client_addr
        return out

    def client_addr(self, headers: Mapping[str, str]) -> str | None:
        """The original client's address of a request a replica forwarded here; None otherwise,
        and always without a forwarding secret (a client could name any address)."""
        if self._secret is None or not self.is_forwarded(headers):
            return None
        return headers.get(CLIENT_ADDR_HEADER) or None

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
            await self._client.get(url + "/health", timeout=self.cfg.probe_timeout_s)
        except httpx.HTTPError:
            return False
        return True


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
