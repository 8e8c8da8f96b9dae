"""Pure status computation: conditions from observed children (no I/O)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shoal.crds import ConditionType, Reason


@dataclass(frozen=True)
class Cond:
    """A condition before timestamps are attached."""

    type: ConditionType
    status: bool
    reason: Reason
    message: str = ""


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    old: Sequence[dict[str, Any]] | None, new: Sequence[Cond], generation: int | None, now: str
) -> list[dict[str, Any]]:
    """The new conditions, keeping lastTransitionTime of those whose status did not change."""
    previous = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        status = "True" if c.status else "False"
        before = previous.get(c.type.value)
        since = before["lastTransitionTime"] if before and before.get("status") == status else now
        cond: dict[str, Any] = {
            "type": c.type.value,
            "status": status,
            "reason": c.reason.value,
            "message": c.message,
            "lastTransitionTime": since,
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


def invalid(reason: Reason, message: str) -> list[Cond]:
    """Conditions of a resource whose spec cannot be acted on."""
    return [
        Cond(ConditionType.READY, False, reason, message),
        Cond(ConditionType.PROGRESSING, False, reason, message),
        Cond(ConditionType.DEGRADED, True, reason, message),
    ]


@dataclass(frozen=True)
class Rollout:
    """What a Deployment reports about its replicas."""

    desired: int
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    observed: bool = True
    """The Deployment controller has seen the latest spec."""
    unavailable: str | None = None
    """Message of an Available=False condition."""
    stalled: str | None = None
    """Message of a ProgressDeadlineExceeded condition."""
    missing: bool = False
    """There is no Deployment at all (deleted, or refused by the API server)."""

    @classmethod
    def of(cls, deployment: dict[str, Any] | None) -> Rollout:
        if deployment is None:
            return cls(desired=0, observed=False, missing=True)
        spec, st = deployment.get("spec") or {}, deployment.get("status") or {}
        generation = (deployment.get("metadata") or {}).get("generation")
        conds = {c.get("type"): c for c in st.get("conditions") or []}
        available, progressing = conds.get("Available"), conds.get("Progressing")
        return cls(
            desired=int(spec.get("replicas", 1)),
            replicas=int(st.get("replicas", 0)),
            ready=int(st.get("readyReplicas", 0)),
            updated=int(st.get("updatedReplicas", 0)),
            observed=generation is None or int(st.get("observedGeneration", 0)) >= int(generation),
            unavailable=available.get("message", "") if available and available.get("status") == "False" else None,
            stalled=(
                progressing.get("message", "")
                if progressing and progressing.get("reason") == "ProgressDeadlineExceeded"
                else None
            ),
        )


def workload_conditions(r: Rollout, what: str = "replicas") -> list[Cond]:
    """Ready / Progressing / Degraded of a Deployment-backed resource."""
    if r.missing:
        # Never "scaled to zero": nothing says how many replicas there should be.
        why = f"the Deployment of the {what} does not exist (the operator recreates it)"
        return [
            Cond(ConditionType.READY, False, Reason.CHILD_MISSING, why),
            Cond(ConditionType.PROGRESSING, True, Reason.RECONCILING, why),
            Cond(ConditionType.DEGRADED, True, Reason.CHILD_MISSING, why),
        ]
    counts = f"{r.ready}/{r.desired} {what} ready"
    if r.desired == 0:
        ready = Cond(ConditionType.READY, False, Reason.SCALED_TO_ZERO, f"scaled to zero {what}")
    elif r.ready == 0:
        ready = Cond(ConditionType.READY, False, Reason.REPLICAS_UNAVAILABLE, counts)
    else:
        ready = Cond(ConditionType.READY, True, Reason.AVAILABLE, counts)
    if not r.observed or r.updated < r.desired:
        progressing = Cond(ConditionType.PROGRESSING, True, Reason.ROLLING_OUT, f"{r.updated}/{r.desired} updated")
    elif r.ready < r.desired:
        progressing = Cond(ConditionType.PROGRESSING, True, Reason.WAITING_FOR_REPLICAS, counts)
    else:
        progressing = Cond(ConditionType.PROGRESSING, False, Reason.ROLLOUT_COMPLETE, counts)
    if r.stalled is not None:
        degraded = Cond(ConditionType.DEGRADED, True, Reason.ROLLOUT_STALLED, r.stalled)
    elif r.unavailable is not None and r.desired > 0:
        degraded = Cond(ConditionType.DEGRADED, True, Reason.REPLICAS_UNAVAILABLE, r.unavailable or counts)
    else:
        degraded = Cond(ConditionType.DEGRADED, False, Reason.AS_EXPECTED)
    return [ready, progressing, degraded]


def pool_status(
    generation: int | None,
    deployment: dict[str, Any] | None,
    *,
    selector: str,
    endpoints: list[str],
    old_conditions: Sequence[dict[str, Any]] | None,
    now: str,
) -> dict[str, Any]:
    """The status of a valid ModelPool given its Deployment."""
    r = Rollout.of(deployment)
    return {
        "observedGeneration": generation,
        "replicas": r.replicas,
        "readyReplicas": r.ready,
        "selector": selector,
        "endpoints": endpoints,
        "conditions": merge_conditions(old_conditions, workload_conditions(r), generation, now),
    }


def router_conditions(r: Rollout, pool_ready: dict[str, int]) -> list[Cond]:
    """A router is Degraded (PoolNotReady) while a pool it serves has no ready replica."""
    ready, progressing, degraded = workload_conditions(r, "router replicas")
    empty = sorted(name for name, n in pool_ready.items() if n == 0)
    if empty and not degraded.status:
        degraded = Cond(ConditionType.DEGRADED, True, Reason.POOL_NOT_READY, f"no ready replica in: {', '.join(empty)}")
    return [ready, progressing, degraded]


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
