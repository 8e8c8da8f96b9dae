"""AgentProgram status from its router: Ready once the router has loaded the class, plus the
class's program counts. Refreshed after each reconcile and by one operator-wide poll loop.

One loop rather than a kopf timer per AgentProgram: kopf puts a finalizer on every object a
timer watches, which this operator avoids (an uninstalled operator would leave AgentPrograms
undeletable), and one loop asks each router once per round, not once per program.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import defaultdict
from dataclasses import replace
from typing import Any

from shoal.crds import AgentProgramSpec, ConditionType, Reason, RouterSpec
from shoal.operator.builders.common import Owner, child_name, selector_labels
from shoal.operator.builders.program_class import ClassError, program_class
from shoal.operator.context import Ctx, generation, status_unchanged, try_spec
from shoal.operator.kube import AGENTPROGRAMS, PODS, ROUTERS, SECRETS
from shoal.operator.router_classes import (
    ClassesUnavailable,
    RouterAddress,
    RouterClasses,
    merge_replicas,
    version_of,
)
from shoal.operator.status import Cond, merge_conditions, now_rfc3339

log = logging.getLogger(__name__)

ROUTER_PORT_IN_CLUSTER = 80


async def router_api_key(ctx: Ctx, namespace: str, spec: RouterSpec) -> str | None:
    """One of the router's client API keys (any key may read its classes); None without auth.

    Raises ClassesUnavailable when the router has auth on and no key can be read.
    """
    if spec.auth is None:
        return None
    name = spec.auth.api_keys_secret.name
    if not ctx.check_secrets:
        raise ClassesUnavailable("the router requires an API key and the operator may not read Secrets")
    secret = await ctx.kube.get(SECRETS, namespace, name)
    keys = {k: base64.b64decode(v).decode() for k, v in ((secret or {}).get("data") or {}).items()}
    keys.update((secret or {}).get("stringData") or {})
    if not keys:
        raise ClassesUnavailable(f"no API key in Secret {name!r} to ask the router with")
    return keys[min(keys)].strip()


async def class_reports(ctx: Ctx, router_body: dict[str, Any]) -> tuple[RouterClasses | None, str]:
    """The router's loaded classes, or None and why not."""
    if ctx.fetch_classes is None:
        return None, "the operator does not poll routers"
    owner = Owner.of(router_body)
    spec = try_spec(RouterSpec, router_body)
    if spec is None:
        return None, f"Router {owner.name} has an invalid spec"
    try:
        key = await router_api_key(ctx, owner.namespace, spec)
        address = RouterAddress(owner.namespace, owner.name, child_name(owner), spec.service.port, key)
        replicas = await _ready_replica_ips(ctx, owner) if spec.replicas > 1 else []
        if not replicas:
            return await ctx.fetch_classes(address), ""
        # Each replica loads the file and owns some programs: ask every ready one, add up.
        fetch = ctx.fetch_classes
        answers = await asyncio.gather(*(fetch(replace(address, pod_ip=ip)) for ip in replicas))
        return merge_replicas(list(answers)), ""
    except ClassesUnavailable as exc:
        return None, str(exc)


async def _ready_replica_ips(ctx: Ctx, owner: Owner) -> list[str]:
    """Pod IPs of the router's ready, not terminating replicas."""
    out = []
    for pod in await ctx.kube.list(PODS, owner.namespace, selector_labels(owner)):
        status = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if ready and status.get("podIP") and not (pod.get("metadata") or {}).get("deletionTimestamp"):
            out.append(str(status["podIP"]))
    return sorted(out)


def _expected_version(body: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    spec = try_spec(AgentProgramSpec, body)
    if spec is None:
        return ()
    try:
        return version_of(program_class(body["metadata"]["name"], spec))
    except ClassError:
        return ()


def program_status(
    body: dict[str, Any], router: str, answer: RouterClasses | None, why: str, now: str
) -> dict[str, Any]:
    """Status of a reconciled AgentProgram given what its router reports (pure)."""
    name = body["metadata"]["name"]
    gen = generation(body)
    report = answer.classes.get(name) if answer is not None else None
    expected = _expected_version(body)
    stale = [v for v in report.versions if expected and v != expected] if report is not None else []
    everywhere = report is not None and answer is not None and report.loaded_by == answer.replicas
    if report is not None and everywhere and not stale:
        message = f"loaded by Router {router}"
        conds = [
            Cond(ConditionType.READY, True, Reason.AVAILABLE, message),
            Cond(ConditionType.PROGRESSING, False, Reason.ROLLOUT_COMPLETE, message),
        ]
    else:
        if report is not None and stale:
            old_values = dict(stale[0])
            ran = ", ".join(f"{k} {old_values.get(k)}" for k, v in expected if old_values.get(k) != v)
            detail = f"it still runs an older version: {ran}"
        elif report is not None and answer is not None:
            detail = f"loaded by {report.loaded_by} of {answer.replicas} router replicas"
        else:
            detail = why or "not among the classes it reports"
        if answer is not None and answer.file_error:
            detail += f"; the router says: {answer.file_error}"
        message = f"in Router {router}'s classes file; not loaded by the router yet ({detail})"
        conds = [
            Cond(ConditionType.READY, False, Reason.CLASS_NOT_LOADED, message),
            Cond(ConditionType.PROGRESSING, True, Reason.RECONCILING, message),
        ]
    conds.append(Cond(ConditionType.DEGRADED, False, Reason.AS_EXPECTED))
    old = (body.get("status") or {}).get("conditions")
    return {
        "observedGeneration": gen,
        "activePrograms": report.active if report else None,
        "pausedPrograms": report.paused if report else None,
        "queuedPrograms": report.queued if report else None,
        "stepsPerMinute": report.steps_per_minute if report else None,
        "conditions": merge_conditions(old, conds, gen, now),
    }


def _reconciled(body: dict[str, Any]) -> bool:
    """The last reconcile of this generation succeeded (problems are the reconcile's to report)."""
    status = body.get("status") or {}
    if status.get("observedGeneration") != generation(body):
        return False
    degraded = next((c for c in status.get("conditions") or [] if c.get("type") == "Degraded"), None)
    return degraded is not None and degraded.get("status") == "False"


async def write_program_status(
    ctx: Ctx,
    namespace: str,
    name: str,
    router: str,
    answer: RouterClasses | None,
    why: str,
    *,
    reconciled: dict[str, Any] | None = None,
) -> None:
    """Re-read the program and patch its status when it changed.

    ``reconciled`` is the body a successful reconcile just handled; without it, only programs
    whose current generation was reconciled successfully are touched.
    """
    async with ctx.lock("AgentProgram", namespace, name):
        body = await ctx.kube.get(AGENTPROGRAMS, namespace, name)
        if body is None:
            return
        if reconciled is not None:
            if generation(body) != generation(reconciled):
                return  # a newer spec arrived: its own reconcile reports on it
            body = {**body, "status": {**(body.get("status") or {}), "observedGeneration": generation(body)}}
        elif not _reconciled(body):
            return
        status = program_status(body, router, answer, why, now_rfc3339())
        if reconciled is None and status_unchanged(body, status):
            return
        await ctx.kube.patch_status(AGENTPROGRAMS, namespace, name, status)


async def refresh_program_statuses(ctx: Ctx) -> None:
    """One round: ask every router that has AgentPrograms for its classes, update their status."""
    by_router: dict[tuple[str, str], list[str]] = defaultdict(list)
    for namespace in ctx.program_namespaces():
        for body in await ctx.kube.list(AGENTPROGRAMS, namespace):
            router = (body.get("spec") or {}).get("router")
            if isinstance(router, str) and _reconciled(body):
                by_router[(namespace, router)].append(body["metadata"]["name"])
    for (namespace, router_name), names in sorted(by_router.items()):
        router = await ctx.kube.get(ROUTERS, namespace, router_name)
        if router is None:
            # Its classes come back with the Router (they are rendered from every AgentProgram).
            answer, why = None, f"Router {router_name} not found"
        else:
            answer, why = await class_reports(ctx, router)
        for name in names:
            await write_program_status(ctx, namespace, name, router_name, answer, why)


async def poll_program_statuses(ctx: Ctx, interval_s: float) -> None:
    """Refresh every ``interval_s`` until cancelled; a failed round is logged and retried."""
    while True:
        try:
            await refresh_program_statuses(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop must outlive any one API error
            log.exception("refreshing AgentProgram status failed; retrying in %.0fs", interval_s)
        await asyncio.sleep(interval_s)
