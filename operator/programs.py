"""AgentProgram controller: validate the class and reflect it in its router's config."""

from __future__ import annotations

import contextlib
from typing import Any

from shoal.crds import AgentProgramSpec, ConditionType, ModelPoolSpec, Reason, RouterSpec
from shoal.operator.builders.router_config import served_models
from shoal.operator.context import (
    Ctx,
    NotReady,
    SpecRejected,
    generation,
    report_problem,
    try_spec,
    validate_spec,
)
from shoal.operator.kube import AGENTPROGRAMS, MODELPOOLS, ROUTERS
from shoal.operator.routers import reconcile_router
from shoal.operator.status import Cond, merge_conditions, now_rfc3339


async def reconcile_program(ctx: Ctx, body: dict[str, Any]) -> None:
    """Check the program's router and model, re-render the router's config, record the outcome."""
    meta = body["metadata"]
    async with ctx.lock("AgentProgram", meta.get("namespace") or "default", meta["name"]):
        await _guarded(ctx, body)


async def _guarded(ctx: Ctx, body: dict[str, Any]) -> None:
    try:
        digest = await _reconcile(ctx, body)
    except (SpecRejected, NotReady) as exc:
        await report_problem(ctx, AGENTPROGRAMS, body, exc.reason, exc.message)
        raise
    meta = body["metadata"]
    gen = generation(body)
    message = f"in the config of Router {body['spec']['router']} (programs.yaml)"
    conds = [
        Cond(ConditionType.READY, True, Reason.AVAILABLE, message),
        Cond(ConditionType.PROGRESSING, False, Reason.ROLLOUT_COMPLETE, message),
        Cond(ConditionType.DEGRADED, False, Reason.AS_EXPECTED),
    ]
    status = {
        "observedGeneration": gen,
        "routerConfigHash": digest,
        "conditions": merge_conditions((body.get("status") or {}).get("conditions"), conds, gen, now_rfc3339()),
    }
    await ctx.kube.patch_status(AGENTPROGRAMS, meta.get("namespace") or "default", meta["name"], status)


async def _reconcile(ctx: Ctx, body: dict[str, Any]) -> str:
    spec = validate_spec(AgentProgramSpec, body)
    namespace = body["metadata"].get("namespace") or "default"
    router_body = await ctx.kube.get(ROUTERS, namespace, spec.router)
    if router_body is None:
        raise NotReady(Reason.ROUTER_NOT_FOUND, f"Router {spec.router!r} not found")
    router = try_spec(RouterSpec, router_body)
    if router is None:
        raise NotReady(Reason.ROUTER_NOT_READY, f"Router {spec.router!r} has an invalid spec")
    pools = {p.name: try_spec(ModelPoolSpec, await ctx.kube.get(MODELPOOLS, namespace, p.name)) for p in router.pools}
    served = served_models(router, pools)
    if spec.model not in served:
        raise NotReady(
            Reason.MODEL_NOT_SERVED,
            f"Router {spec.router!r} serves no model {spec.model!r} (serves: {', '.join(sorted(served)) or 'none'})",
        )
    try:
        return await reconcile_router(ctx, router_body)
    except (SpecRejected, NotReady) as exc:
        raise NotReady(Reason.ROUTER_NOT_READY, f"Router {spec.router!r}: {exc.message}") from None


async def forget_program(ctx: Ctx, body: dict[str, Any]) -> None:
    """Re-render the router a deleted program named (best effort: the router's own handler heals later)."""
    spec = try_spec(AgentProgramSpec, body)
    if spec is None:
        return
    router_body = await ctx.kube.get(ROUTERS, body["metadata"].get("namespace") or "default", spec.router)
    if router_body is not None and try_spec(RouterSpec, router_body) is not None:
        with contextlib.suppress(SpecRejected, NotReady):
            await reconcile_router(ctx, router_body)
