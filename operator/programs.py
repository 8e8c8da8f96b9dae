"""AgentProgram controller: validate the class, put it in its router's classes file, report status."""

from __future__ import annotations

import contextlib
from typing import Any

from shoal.crds import AgentProgramSpec, ModelPoolSpec, Reason, RouterSpec
from shoal.operator.builders.common import Owner
from shoal.operator.builders.program_class import ClassError, cluster_problem, owner_ref, program_class
from shoal.operator.builders.router_config import served_models
from shoal.operator.context import (
    Ctx,
    NotReady,
    SpecRejected,
    report_problem,
    try_spec,
    validate_spec,
)
from shoal.operator.kube import AGENTPROGRAMS, MODELPOOLS, ROUTERS
from shoal.operator.program_status import class_reports, write_program_status
from shoal.operator.routers import reconcile_router


async def reconcile_program(ctx: Ctx, body: dict[str, Any]) -> None:
    """Check the program's router and model, re-render the router's classes, record the outcome."""
    meta = body["metadata"]
    ctx.saw_program_in(meta.get("namespace") or "default")
    async with ctx.lock("AgentProgram", meta.get("namespace") or "default", meta["name"]):
        router = await _guarded(ctx, body)
    # Ask the router at once: an unchanged class is still loaded, a new one shows up on a later poll.
    answer, why = await class_reports(ctx, router)
    namespace, router_name = Owner.of(body).namespace, router["metadata"]["name"]
    await write_program_status(ctx, namespace, meta["name"], router_name, answer, why, reconciled=body)


async def _guarded(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return await _reconcile(ctx, body)
    except (SpecRejected, NotReady) as exc:
        await report_problem(ctx, AGENTPROGRAMS, body, exc.reason, exc.message)
        raise


async def _reconcile(ctx: Ctx, body: dict[str, Any]) -> dict[str, Any]:
    """The Router body after its config was re-rendered with this program's class."""
    spec = validate_spec(AgentProgramSpec, body)
    problem = cluster_problem(spec)
    if problem is not None:
        raise SpecRejected(Reason.FEATURE_NOT_SUPPORTED, problem)
    try:
        program_class(body["metadata"]["name"], spec, owner_ref(body))
    except ClassError as exc:
        raise SpecRejected(Reason.SPEC_INVALID, str(exc)) from None
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
        await reconcile_router(ctx, router_body)
    except (SpecRejected, NotReady) as exc:
        raise NotReady(Reason.ROUTER_NOT_READY, f"Router {spec.router!r}: {exc.message}") from None
    return router_body


async def forget_program(ctx: Ctx, body: dict[str, Any]) -> None:
    """Re-render the router a deleted program named (best effort: the router's own handler heals later)."""
    spec = try_spec(AgentProgramSpec, body)
    if spec is None:
        return
    router_body = await ctx.kube.get(ROUTERS, body["metadata"].get("namespace") or "default", spec.router)
    if router_body is not None and try_spec(RouterSpec, router_body) is not None:
        with contextlib.suppress(SpecRejected, NotReady):
            await reconcile_router(ctx, router_body)
