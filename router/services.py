"""What the proxy needs, built once per app."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from shoal.router.auth import KeyStore, RateLimiter
from shoal.router.config import RouterConfig
from shoal.router.metrics import RouterMetrics
from shoal.router.peer_forwarding import PeerForwarder
from shoal.router.pool import PoolRuntime
from shoal.router.programs.gateway import ProgramGateway
from shoal.router.routes import RouteTable
from shoal.router.tenancy import Tenancy
from shoal.router.upstream import UpstreamClient


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
