"""Wiring sandboxes into the router app: settings, backend, manager, tool route, lifespan.

Settings come from ``SHOAL_SANDBOXES`` (a YAML/JSON mapping of ``SandboxSettings``; the
operator or ``shoal up`` sets it) until router.yaml has a ``sandboxes:`` section;
``SHOAL_ROUTER_ID`` alone names this router's sandboxes (one id per router process: a
router removes every sandbox of its id it does not hold when it starts).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import yaml
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from shoal.router.sandboxes.backend import SandboxBackend
from shoal.router.sandboxes.manager import SandboxManager
from shoal.router.sandboxes.metrics import SandboxMetrics
from shoal.router.sandboxes.routes import mount_tool_routes
from shoal.router.sandboxes.settings import SandboxSettings

SETTINGS_ENV = "SHOAL_SANDBOXES"
ROUTER_ID_ENV = "SHOAL_ROUTER_ID"


def settings_from_env(env: Mapping[str, str] = os.environ) -> SandboxSettings:
    """``SandboxSettings`` from the environment; raises ValueError with a one-line message."""
    raw: Any = {}
    text = env.get(SETTINGS_ENV, "").strip()
    if text:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{SETTINGS_ENV}: not YAML/JSON ({' '.join(str(exc).split())})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{SETTINGS_ENV}: expected a mapping of sandbox settings")
    if env.get(ROUTER_ID_ENV) and "routerId" not in raw and "router_id" not in raw:
        raw = {**raw, "routerId": env[ROUTER_ID_ENV]}
    try:
        return SandboxSettings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or SETTINGS_ENV
        raise ValueError(f"{SETTINGS_ENV}: {where}: {first['msg']}") from None


def make_backend(settings: SandboxSettings) -> SandboxBackend:
    """The configured backend; ValueError (one line) when it cannot start here."""
    try:
        if settings.backend == "kubernetes":
            from shoal.router.sandboxes.kubernetes import KubernetesBackend

            return KubernetesBackend(settings)
        from shoal.router.sandboxes.local import LocalBackend

        return LocalBackend(settings)
    except Exception as exc:  # no kubeconfig / service account, an unwritable state dir, ...
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{settings.backend} sandbox backend: {detail}") from None


def attach_sandboxes(app: FastAPI, services: Any, settings: SandboxSettings | None = None) -> SandboxManager | None:
    """One call from the app factory: a manager on the program gateway (release, pre-warm,
    classes, ledger), ``POST /v1/programs/{id}/tools/{name}``, and start/stop in the app's
    lifespan. ``services``: the router's ``Services`` (``programs``, ``keys``, ``tenancy``,
    ``metrics``, ``cfg``). None when the router runs without programs."""
    gateway = services.programs
    if gateway is None:
        return None
    settings = settings or settings_from_env()
    registry: CollectorRegistry = services.metrics.registry
    manager = SandboxManager(make_backend(settings), settings, SandboxMetrics(registry))
    gateway.sandboxes = manager

    def tenant_of(headers: Mapping[str, str]) -> str:
        tenant: str = services.tenancy.tenant(services.keys.authenticate(headers), headers)
        return tenant

    mount_tool_routes(app, manager, gateway, tenant_of, services.cfg.limits.max_body_bytes)
    outer = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with outer(a) as state:
            manager.set_classes(gateway.classes.classes)
            await manager.start()
            try:
                yield state
            finally:
                await manager.stop()

    app.router.lifespan_context = lifespan
    return manager
