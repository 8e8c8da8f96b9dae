"""ModelPool controller: children from the spec, status from the Deployment."""

from __future__ import annotations

from typing import Any

from shoal.crds import ModelPoolSpec, Reason
from shoal.operator.builders.common import Owner, selector_labels
from shoal.operator.builders.modelpool import pool_children, service_url
from shoal.operator.children import converge_all, delete_child
from shoal.operator.context import (
    Ctx,
    NotReady,
    SpecRejected,
    generation,
    report_problem,
    status_unchanged,
    validate_spec,
)
from shoal.operator.kube import HPAS, MODELPOOLS, SCALEDOBJECTS, SECRETS
from shoal.operator.status import now_rfc3339, pool_status, selector_string


async def reconcile_pool(ctx: Ctx, body: dict[str, Any], *, prune: bool = True) -> ModelPoolSpec:
    """Make the pool's children match its spec and record the outcome in status.

    ``prune`` removes an autoscaler the spec no longer asks for. Raises SpecRejected for an
    invalid spec (no child is created or changed).
    """
    meta = body["metadata"]
    namespace = meta.get("namespace") or "default"
    async with ctx.lock("ModelPool", namespace, meta["name"]):
        # Re-read: the caller's copy may be old, and a fresh one lets an unchanged status go unwritten.
        body = await ctx.kube.get(MODELPOOLS, namespace, meta["name"]) or body
        try:
            return await _reconcile(ctx, body, prune)
        except (SpecRejected, NotReady) as exc:
            await report_problem(ctx, MODELPOOLS, body, exc.reason, exc.message)
            raise


async def _reconcile(ctx: Ctx, body: dict[str, Any], prune: bool) -> ModelPoolSpec:
    spec = validate_spec(ModelPoolSpec, body)
    owner = Owner.of(body)
    await _check_api_key_secret(ctx, owner.namespace, spec)
    children = pool_children(owner, spec, ctx.images, keda=ctx.keda)
    applied = await converge_all(ctx.kube, children)
    ctx.note_converged(applied)
    if prune:
        await _drop_stale_autoscalers(ctx, owner, spec)
    deployment = next(a for a in applied if a.get("kind") == "Deployment")
    await write_pool_status(ctx, body, deployment, generation(body), fresh=True)
    return spec


async def _check_api_key_secret(ctx: Ctx, namespace: str, spec: ModelPoolSpec) -> None:
    """NotReady (SecretNotFound) while the engines' API-key Secret or its key is missing."""
    if spec.engine.auth is None or not ctx.check_secrets:
        return
    ref = spec.engine.auth.api_key_secret_ref
    secret = await ctx.kube.get(SECRETS, namespace, ref.name)
    if secret is None or ref.key not in {**(secret.get("data") or {}), **(secret.get("stringData") or {})}:
        raise NotReady(Reason.SECRET_NOT_FOUND, f"Secret {ref.name!r} with key {ref.key!r} (the engines' API key) not found")


async def _drop_stale_autoscalers(ctx: Ctx, owner: Owner, spec: ModelPoolSpec) -> None:
    stale = [HPAS, SCALEDOBJECTS]
    if spec.autoscaling is not None:
        stale.remove(SCALEDOBJECTS if ctx.keda else HPAS)
    if not ctx.keda and SCALEDOBJECTS in stale:
        stale.remove(SCALEDOBJECTS)  # the API does not exist: nothing to delete
    for rt in stale:
        await delete_child(ctx.kube, rt, owner.namespace, f"{owner.name}-engine")


async def write_pool_status(
    ctx: Ctx, body: dict[str, Any], deployment: dict[str, Any] | None, observed: int | None, *, fresh: bool = False
) -> None:
    """Patch the pool's status; ``fresh`` bodies were just read, so an unchanged status is not written."""
    owner = Owner.of(body)
    status = pool_status(
        observed,
        deployment,
        selector=selector_string(selector_labels(owner)),
        endpoints=[service_url(owner)],
        old_conditions=(body.get("status") or {}).get("conditions"),
        now=now_rfc3339(),
    )
    if fresh and status_unchanged(body, status):
        return
    await ctx.kube.patch_status(MODELPOOLS, owner.namespace, owner.name, status)
