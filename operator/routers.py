"""Router controller: config rendered from the Router, its pools and AgentPrograms; status from the children."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from shoal.crds import AgentProgramSpec, ModelPoolSpec, Reason, RouterSpec
from shoal.operator.builders.common import Owner, config_hash
from shoal.operator.builders.program_class import ClassError, cluster_problem, owner_ref, program_class
from shoal.operator.builders.router import endpoint_url, peer_secret, router_children, sandbox_problem
from shoal.operator.builders.router_config import (
    RenderError,
    kubernetes_endpoints,
    kubernetes_peers,
    render,
    served_models,
)
from shoal.operator.children import ChildRejected, converge_all
from shoal.operator.context import (
    Ctx,
    NotReady,
    SpecRejected,
    degraded_reason,
    generation,
    report_problem,
    status_unchanged,
    try_spec,
    validate_spec,
)
from shoal.operator.kube import AGENTPROGRAMS, DEPLOYMENTS, MODELPOOLS, ROUTERS, SECRETS, KubeError
from shoal.operator.scale_to_zero import scaled_to_zero
from shoal.operator.status import Rollout, merge_conditions, now_rfc3339, router_conditions
from shoal.router.programs.config import ProgramClassConfig


async def _pools(ctx: Ctx, namespace: str, spec: RouterSpec) -> dict[str, dict[str, Any] | None]:
    bodies = await asyncio.gather(*(ctx.kube.get(MODELPOOLS, namespace, p.name) for p in spec.pools))
    return {p.name: b for p, b in zip(spec.pools, bodies, strict=True)}


async def program_classes(ctx: Ctx, namespace: str, router: str, served: set[str]) -> list[ProgramClassConfig]:
    """The router classes of the AgentPrograms in the namespace that name ``router`` and can run
    there (valid, not being deleted, a served model, a sandbox a cluster can run)."""
    out = []
    for body in await ctx.kube.list(AGENTPROGRAMS, namespace):
        spec = try_spec(AgentProgramSpec, body)
        if spec is None or spec.router != router or body["metadata"].get("deletionTimestamp"):
            continue
        if spec.model not in served or cluster_problem(spec) is not None:
            continue
        with contextlib.suppress(ClassError):
            out.append(program_class(body["metadata"]["name"], spec, owner_ref(body)))
    return out


async def reconcile_router(ctx: Ctx, body: dict[str, Any]) -> str:
    """Render the config, apply the children, write status; returns the config hash.

    Raises SpecRejected (invalid spec or config) or NotReady (a pool or Secret is missing).
    Existing children are left untouched when either is raised.
    """
    meta = body["metadata"]
    async with ctx.lock("Router", meta.get("namespace") or "default", meta["name"]):
        # Re-read: callers other than the Router's own handler may hold an old copy.
        body = await ctx.kube.get(ROUTERS, meta.get("namespace") or "default", meta["name"]) or body
        return await _guarded(ctx, body)


async def _guarded(ctx: Ctx, body: dict[str, Any]) -> str:
    try:
        return await _reconcile(ctx, body)
    except (SpecRejected, NotReady) as exc:
        await report_problem(ctx, ROUTERS, body, exc.reason, exc.message)
        raise


async def _reconcile(ctx: Ctx, body: dict[str, Any]) -> str:
    spec = validate_spec(RouterSpec, body)
    owner = Owner.of(body)
    pool_bodies = await _pools(ctx, owner.namespace, spec)
    pools = {name: try_spec(ModelPoolSpec, b) for name, b in pool_bodies.items()}
    broken = sorted(n for n, b in pool_bodies.items() if b is not None and pools[n] is None)
    if broken:
        raise NotReady(Reason.POOL_NOT_READY, f"ModelPool with an invalid spec: {', '.join(broken)}")
    classes = await program_classes(ctx, owner.namespace, owner.name, served_models(spec, pools))
    try:
        peers = kubernetes_peers(owner.namespace, owner.name)
        rendered = render(spec, pools, classes, kubernetes_endpoints(owner.namespace), peers=peers)
    except RenderError as exc:
        if exc.reason == Reason.POOL_NOT_FOUND:
            raise NotReady(exc.reason, exc.message) from None
        raise SpecRejected(exc.reason, exc.message) from None
    problem = sandbox_problem(owner, spec, rendered)
    if problem is not None:
        raise SpecRejected(Reason.FEATURE_NOT_SUPPORTED, problem)
    if spec.auth is not None and ctx.check_secrets:
        secret = spec.auth.api_keys_secret.name
        if await ctx.kube.get(SECRETS, owner.namespace, secret) is None:
            raise NotReady(Reason.SECRET_NOT_FOUND, f"Secret {secret!r} with the API keys not found")
    if spec.replicas > 1:
        secret = peer_secret(owner)
        try:
            await ctx.kube.create(secret)
        except KubeError as exc:
            raise ChildRejected("Secret", secret["metadata"]["name"], exc) from None
    applied = await converge_all(ctx.kube, router_children(owner, spec, rendered, ctx.images))
    ctx.note_converged(applied)
    deployment = next(a for a in applied if a.get("kind") == "Deployment")
    digest = config_hash(rendered.data())
    await write_router_status(ctx, body, spec, deployment, pool_bodies, generation(body), digest, fresh=True)
    return digest


async def write_router_status(
    ctx: Ctx,
    body: dict[str, Any],
    spec: RouterSpec,
    deployment: dict[str, Any] | None,
    pool_bodies: dict[str, dict[str, Any] | None],
    observed: int | None,
    digest: str | None,
    *,
    fresh: bool = False,
) -> None:
    owner = Owner.of(body)
    pools = []
    for name, pool in pool_bodies.items():
        pst = (pool or {}).get("status") or {}
        model = ((pool or {}).get("spec") or {}).get("model", {}).get("servedModelName")
        pools.append({"name": name, "model": model, "readyEndpoints": int(pst.get("readyReplicas") or 0)})
    # A pool scaled to zero has no ready replica by design: the router holds its requests meanwhile.
    expected = {p["name"]: p["readyEndpoints"] for p in pools if not scaled_to_zero(pool_bodies[p["name"]])}
    conds = router_conditions(Rollout.of(deployment), expected)
    status: dict[str, Any] = {
        "observedGeneration": observed,
        "replicas": Rollout.of(deployment).replicas,
        "readyReplicas": Rollout.of(deployment).ready,
        "endpoint": endpoint_url(owner, spec),
        "pools": pools,
        "conditions": merge_conditions((body.get("status") or {}).get("conditions"), conds, observed, now_rfc3339()),
    }
    if digest is not None:
        status["configHash"] = digest
    if fresh and status_unchanged(body, status):
        return
    await ctx.kube.patch_status(ROUTERS, owner.namespace, owner.name, status)


async def refresh_router_status(ctx: Ctx, namespace: str, name: str, deployment: dict[str, Any] | None = None) -> None:
    """Recompute a reconciled router's status from its Deployment and its pools' readiness."""
    async with ctx.lock("Router", namespace, name):
        await _refresh(ctx, namespace, name, deployment)


async def _refresh(ctx: Ctx, namespace: str, name: str, deployment: dict[str, Any] | None) -> None:
    body = await ctx.kube.get(ROUTERS, namespace, name)
    if body is None:
        return
    spec = try_spec(RouterSpec, body)
    status = body.get("status") or {}
    if spec is None or not status.get("configHash"):
        return  # never reconciled successfully: the reconcile handler owns its status
    if degraded_reason(body) == Reason.CHILD_REJECTED:
        return  # the last reconcile failed: its condition stays until a reconcile succeeds
    if deployment is None:
        deployment = await ctx.kube.get(DEPLOYMENTS, namespace, f"{name}-router")
    if deployment is None:
        return
    pool_bodies = await _pools(ctx, namespace, spec)
    observed = status.get("observedGeneration")
    await write_router_status(ctx, body, spec, deployment, pool_bodies, observed, None, fresh=True)
