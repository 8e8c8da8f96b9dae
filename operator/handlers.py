"""kopf handlers: thin adapters from kopf events to the controllers.

Run with ``shoal operator`` (or ``kopf run -m shoal.operator.handlers``). Invalid specs become a
PermanentError (the controller already wrote Degraded + an Event); missing dependencies become a
TemporaryError, retried (a child the API server refuses: with doubling delays). No finalizers (so
no kopf timers either): children are owned and garbage-collected by Kubernetes; a child's watch
event (a hand edit, a deletion, a status change) re-converges its owner; one background loop
re-converges every owner each SHOAL_RESYNC_INTERVAL seconds (default 60); AgentProgram status comes
from another that asks each router for its loaded classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable
from typing import Any

import kopf

from shoal.crds import GROUP, VERSION
from shoal.operator.builders.common import LABEL_MANAGED_BY, MANAGER, Images
from shoal.operator.children import ChildRejected, backoff
from shoal.operator.context import Ctx, NotReady, SpecRejected
from shoal.operator.kube import ROUTERS, KubeClient
from shoal.operator.pools import reconcile_pool
from shoal.operator.program_status import poll_program_statuses
from shoal.operator.programs import forget_program, reconcile_program
from shoal.operator.reconcile import converge_owner, resync_forever, shoal_owner
from shoal.operator.router_classes import HttpClassesFetcher
from shoal.operator.routers import reconcile_router, refresh_router_status
from shoal.operator.scale_to_zero import DEFAULT_INTERVAL_S as DEFAULT_SCALE_INTERVAL_S
from shoal.operator.scale_to_zero import INTERVAL_ENV as SCALE_INTERVAL_ENV
from shoal.operator.scale_to_zero import HttpDemandFetcher, scale_forever

CHILD_RESOURCES = [
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("", "v1", "serviceaccounts"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("rbac.authorization.k8s.io", "v1", "roles"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings"),
]
"""Children whose watch events re-converge their owner (ScaledObjects and the router's peer Secret
are not watched: the API may be absent, and Secrets are not listed cluster-wide; the resync heals them)."""


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    # Progress and diff-base in annotations: status stays the resource's own, schema-checked record.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    # One INFO line per API request would cost more than the reconcile itself at scale.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    # Children are watched through the API server's label selector: not every ConfigMap in the cluster.
    for group, version, plural in CHILD_RESOURCES:
        settings.watching.label_selectors[group, version, plural] = f"{LABEL_MANAGED_BY}={MANAGER}"
    kube = KubeClient.from_environment()
    images = Images(
        engine=os.environ.get("SHOAL_ENGINE_IMAGE", Images.engine),
        router=os.environ.get("SHOAL_ROUTER_IMAGE", Images.router),
        pull_policy=os.environ.get("SHOAL_IMAGE_PULL_POLICY", Images.pull_policy),
    )
    keda = await kube.has_api("keda.sh/v1alpha1")
    check_secrets = os.environ.get("SHOAL_CHECK_SECRETS", "true").lower() in ("1", "true", "yes")
    fetcher = HttpClassesFetcher()
    memo.ctx = Ctx(kube=kube, images=images, keda=keda, check_secrets=check_secrets, fetch_classes=fetcher)
    interval = _positive_seconds("SHOAL_PROGRAM_STATUS_INTERVAL", 10.0)
    memo.program_status_task = asyncio.create_task(poll_program_statuses(memo.ctx, interval))
    resync = _positive_seconds("SHOAL_RESYNC_INTERVAL", 60.0)
    memo.resync_task = asyncio.create_task(resync_forever(memo.ctx, resync))
    memo.demand_fetcher = HttpDemandFetcher()
    scale_interval = _positive_seconds(SCALE_INTERVAL_ENV, DEFAULT_SCALE_INTERVAL_S)
    memo.scale_task = asyncio.create_task(scale_forever(memo.ctx, memo.demand_fetcher, scale_interval))
    logger.info("shoal operator: autoscaling via %s", "KEDA" if keda else "HPA")


def _positive_seconds(env: str, default: float) -> float:
    raw = os.environ.get(env)
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not value > 0:
        raise kopf.PermanentError(f"{env}={raw!r}: expected a positive number of seconds")
    return value


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for attr in ("program_status_task", "resync_task", "scale_task"):
        task: asyncio.Task[None] | None = getattr(memo, attr, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    ctx: Ctx | None = getattr(memo, "ctx", None)
    if ctx is not None:
        if isinstance(ctx.fetch_classes, HttpClassesFetcher):
            await ctx.fetch_classes.aclose()
        fetcher: HttpDemandFetcher | None = getattr(memo, "demand_fetcher", None)
        if fetcher is not None:
            await fetcher.aclose()
        await ctx.kube.aclose()


async def _run(step: Awaitable[Any], retry: int = 0) -> Any:
    try:
        return await step
    except SpecRejected as exc:
        raise kopf.PermanentError(str(exc)) from None
    except NotReady as exc:
        delay = backoff(exc.delay, retry) if isinstance(exc, ChildRejected) else exc.delay
        raise kopf.TemporaryError(str(exc), delay=delay) from None


@kopf.index(GROUP, VERSION, "routers")
def routers_by_pool(namespace: str | None, name: str | None, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    """(namespace, pool) -> names of the routers that list the pool (kept from the watch, no API calls)."""
    pools = spec.get("pools") or []
    return {(namespace, p["name"]): name for p in pools if isinstance(p, dict) and isinstance(p.get("name"), str)}


def _routers_of(index: kopf.Index[Any, Any], namespace: str, pool: str) -> list[str]:
    # Indexes arrive as extra keyword arguments named after the index function.
    return sorted(set(index.get((namespace, pool), [])))


@kopf.on.resume(GROUP, VERSION, "modelpools")
@kopf.on.create(GROUP, VERSION, "modelpools")
@kopf.on.update(GROUP, VERSION, "modelpools")
async def modelpool(
    body: kopf.Body,
    reason: str,
    retry: int,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kw: Any,
) -> None:
    ctx: Ctx = memo.ctx
    namespace = body.metadata.namespace or "default"
    ctx.saw_owner("ModelPool", namespace, body.metadata.name)
    # A new pool cannot have a stale autoscaler to remove.
    await _run(reconcile_pool(ctx, dict(body), prune=reason != "create"), retry)
    # Routers that name this pool may render a new config (its served name) or find it at last.
    for name in _routers_of(kw["routers_by_pool"], namespace, body.metadata.name):
        router = await ctx.kube.get(ROUTERS, namespace, name)
        if router is None:
            continue
        try:
            await reconcile_router(ctx, router)
        except (SpecRejected, NotReady) as exc:
            logger.info("router %s not updated: %s", name, exc)


@kopf.on.resume(GROUP, VERSION, "routers")
@kopf.on.create(GROUP, VERSION, "routers")
@kopf.on.update(GROUP, VERSION, "routers")
async def router(body: kopf.Body, retry: int, memo: kopf.Memo, **_: Any) -> None:
    memo.ctx.saw_owner("Router", body.metadata.namespace or "default", body.metadata.name)
    await _run(reconcile_router(memo.ctx, dict(body)), retry)


@kopf.on.event(GROUP, VERSION, "modelpools")
async def pool_changed(body: kopf.Body, memo: kopf.Memo, **kw: Any) -> None:
    """Any pool event (status included): the routers serving it recount their ready endpoints.

    An event handler, not a timer: kopf guards timers with a finalizer, and nothing here needs one.
    """
    namespace = body.metadata.namespace or "default"
    for name in _routers_of(kw["routers_by_pool"], namespace, body.metadata.name):
        await refresh_router_status(memo.ctx, namespace, name)


@kopf.on.resume(GROUP, VERSION, "agentprograms")
@kopf.on.create(GROUP, VERSION, "agentprograms")
@kopf.on.update(GROUP, VERSION, "agentprograms")
async def agentprogram(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await _run(reconcile_program(memo.ctx, dict(body)))


@kopf.on.event(GROUP, VERSION, "agentprograms")
async def agentprogram_deleted(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    # A watch event rather than on.delete: no finalizer is needed to drop a program from its router.
    if type == "DELETED":
        await forget_program(memo.ctx, dict(body))


async def child_changed(body: kopf.Body, type: str | None, memo: kopf.Memo,
                        logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:  # fmt: skip
    """A child the operator owns changed or was deleted: converge its owner (status included)."""
    ctx: Ctx = memo.ctx
    owner = shoal_owner(body)
    if owner is None:
        return
    if type == "DELETED":
        ctx.forget_child(body)
    elif ctx.is_converged(body):
        return  # the echo of Shoal's own apply, or a version already checked
    kind, name = owner
    try:
        # Autoscalers the spec dropped were removed when the spec changed (and the resync prunes).
        await converge_owner(ctx, kind, body.metadata.namespace or "default", name, prune=False)
    except (SpecRejected, NotReady) as exc:
        logger.info("%s %s not converged after a %s event: %s", kind, name, body.get("kind"), exc)


for _group, _version, _plural in CHILD_RESOURCES:
    kopf.on.event(_group, _version, _plural, labels={LABEL_MANAGED_BY: MANAGER})(child_changed)
