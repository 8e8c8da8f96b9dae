"""The router's ASGI app: OpenAI-compatible proxy routes plus /v1/models, /health, /metrics."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shoal.router.auth import KeyStore, RateLimiter
from shoal.router.cold_start import DemandCollector, register_demand_route
from shoal.router.config import RouterConfig
from shoal.router.discovery import EndpointSource
from shoal.router.errors import RouterError, http_error
from shoal.router.metrics import RouterMetrics
from shoal.router.peer_forwarding import PeerForwarder, program_id_of_path
from shoal.router.peers import PeerSet, forwarding_secret
from shoal.router.pool import PoolRuntime
from shoal.router.programs.api import register_program_routes
from shoal.router.programs.gateway import ProgramGateway
from shoal.router.proxy import ProxyEndpoint
from shoal.router.reliability import httpx_timeout
from shoal.router.routes import RouteTable
from shoal.router.sandboxes.service import attach_sandboxes
from shoal.router.services import Services
from shoal.router.tenancy import Tenancy, upstream_api_key, upstream_auth_headers
from shoal.router.upstream import UpstreamClient

log = logging.getLogger("shoal.router")


def make_client(cfg: RouterConfig, upstream_key: str | None = None) -> httpx.AsyncClient:
    """The control-path client (health, metrics, digests, tokenizer): one keep-alive pool,
    carrying the router's own credential."""
    limits = httpx.Limits(
        max_connections=cfg.limits.max_connections,
        max_keepalive_connections=cfg.limits.max_keepalive_connections,
        keepalive_expiry=30.0,
    )
    return httpx.AsyncClient(
        timeout=httpx_timeout(cfg.timeouts), limits=limits, trust_env=False,
        headers=upstream_auth_headers(upstream_key),
    )


def build_services(
    cfg: RouterConfig,
    client: httpx.AsyncClient | None = None,
    sources: Mapping[str, EndpointSource] | None = None,
) -> Services:
    """Everything the app serves with; ``sources`` overrides discovery per pool (tests)."""
    metrics = RouterMetrics()
    upstream_key = upstream_api_key(cfg.upstream)
    client = client or make_client(cfg, upstream_key)
    pools = {
        p.name: PoolRuntime(p, cfg, client, metrics, metrics, source=(sources or {}).get(p.name))
        for p in cfg.pools
    }
    metrics.registry.register(DemandCollector(pools))
    upstream = UpstreamClient(cfg.timeouts.connect_s, cfg.limits.max_keepalive_connections)
    peers = None
    if cfg.peers is not None:
        secret = forwarding_secret(cfg.programs.forwarded_secret_env)
        peer_set = PeerSet(cfg.peers, client, metrics.registry, secret)
        peers = PeerForwarder(peer_set, client, upstream, cfg.timeouts, metrics.registry, cfg.programs.max_wait_s)
    programs_cfg = cfg.programs
    if programs_cfg.count_foreign_load is None:  # replicas share the engines: count each other's load
        programs_cfg = programs_cfg.model_copy(update={"count_foreign_load": cfg.peers is not None})
    programs = ProgramGateway(
        programs_cfg, pools=pools, client=client, upstream_auth=upstream_auth_headers(upstream_key),
        call_timeout_s=cfg.timeouts.total_s, registry=metrics.registry,
    )
    return Services(
        cfg=cfg,
        client=client,
        upstream=upstream,
        programs=programs,
        peers=peers,
        pools=pools,
        routes=RouteTable(cfg),
        keys=KeyStore(cfg.auth),
        limiter=RateLimiter(cfg.rate_limits),
        metrics=metrics,
        tenancy=Tenancy(cfg.tenancy, upstream_key),
        upstream_auth=upstream_auth_headers(upstream_key),
        hashing=ThreadPoolExecutor(max_workers=2, thread_name_prefix="prompt-hash"),
    )


class FastPath:
    """ASGI entry point: generation requests go straight to the proxy, everything else to FastAPI.

    The proxy does its own error handling, so skipping the framework's middleware stack
    (several wrappers around every ``send`` of every streamed chunk) costs nothing.
    """

    def __init__(self, app: FastAPI, endpoints: Mapping[str, ProxyEndpoint]) -> None:
        self.app = app
        self.endpoints = dict(endpoints)
        self.services: Services = app.state.services

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.endpoints.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        peers = self.services.peers
        if peers is not None and scope["type"] == "http" and program_id_of_path(scope["path"]) is not None:
            limit = self.services.cfg.limits.max_body_bytes
            forwarded = await peers.forward_program_route(scope, receive, send, limit)
            if forwarded is None:
                return  # the replica owning the program answered
            receive = forwarded
        elif peers is not None and scope["type"] == "http" and scope["path"] == "/v1/programs" and scope["method"] == "GET":
            await peers.list_programs(scope, receive, send, self.app)  # every replica's programs
            return
        await self.app(scope, receive, send)


def create_app(cfg: RouterConfig, services: Services | None = None) -> FastPath:
    """The router's ASGI app. Pools start polling and discovery when the app starts (lifespan)."""
    s = services or build_services(cfg)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for pool in s.pools.values():
            await pool.start()
        if s.peers is not None:
            await s.peers.start()
        if s.programs is not None:
            await s.programs.start()
        # Long-lived startup objects leave the collector's view: full collections stay short,
        # which keeps them out of the tail latency of requests.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if s.programs is not None:
                await s.programs.stop()
            if s.peers is not None:
                await s.peers.stop()
            for pool in s.pools.values():
                await pool.stop()
            await s.client.aclose()
            await s.upstream.aclose()
            s.hashing.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="Shoal router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services = s

    @app.exception_handler(StarletteHTTPException)
    async def http_exception(_: Request, exc: StarletteHTTPException) -> Response:
        return http_error(exc.status_code, str(exc.detail)).response()
    proxies = {
        "/v1/chat/completions": ProxyEndpoint(s, "chat", "/v1/chat/completions"),
        "/v1/completions": ProxyEndpoint(s, "completion", "/v1/completions"),
    }
    for path, endpoint in proxies.items():
        app.router.routes.append(Route(path, endpoint, methods=["POST"]))

    if s.programs is not None:
        register_program_routes(app, s.programs, s.keys, s.tenancy)
        attach_sandboxes(app, s)  # tool API, sandbox manager on the gateway, its lifespan

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            s.keys.authenticate({k.lower(): v for k, v in request.headers.items()})
        except RouterError as err:
            return err.response()
        data = []
        for name, pool in sorted(s.routes.model_names().items()):
            served = s.pools[pool].endpoints if pool else None
            ready = sum(1 for e in served if e.breaker.available) if served is not None else None
            data.append(
                {"id": name, "object": "model", "created": created, "owned_by": "shoal",
                 "pool": pool or None, "ready_endpoints": ready}
            )
        return JSONResponse({"object": "list", "data": data})

    @app.get("/health")
    async def health() -> Response:
        pools = {
            name: {"endpoints": len(p.endpoints), "healthy": sum(1 for e in p.endpoints if e.breaker.available)}
            for name, p in s.pools.items()
        }
        # A pool that scales from zero is served (its requests are held) with no engine at all.
        ok = all(v["healthy"] > 0 or s.pools[name].cold_start is not None for name, v in pools.items())
        return JSONResponse({"status": "ok" if ok else "degraded", "pools": pools}, status_code=200 if ok else 503)

    register_demand_route(app, s.pools)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(s.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return FastPath(app, proxies)
