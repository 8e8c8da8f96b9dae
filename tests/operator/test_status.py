"""Pure status computation and spec validation (condition reasons)."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.crds import AgentProgramSpec, ConditionType, ModelPoolSpec, Reason, RouterSpec
from shoal.operator.context import SpecRejected, validate_spec
from shoal.operator.status import Cond, Rollout, merge_conditions, workload_conditions


def dep(replicas: int, ready: int = 0, updated: int | None = None, conditions: list[Any] | None = None) -> dict:
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 2,
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": replicas if updated is None else updated,
            "conditions": conditions or [],
        },
    }


@pytest.mark.parametrize(
    ("deployment", "ready", "progressing", "degraded"),
    [
        (dep(2, 2), (True, "Available"), (False, "RolloutComplete"), (False, "AsExpected")),
        (dep(2, 0), (False, "ReplicasUnavailable"), (True, "WaitingForReplicas"), (False, "AsExpected")),
        (dep(2, 1, updated=1), (True, "Available"), (True, "RollingOut"), (False, "AsExpected")),
        (dep(0), (False, "ScaledToZero"), (False, "RolloutComplete"), (False, "AsExpected")),
        (dep(1, 0, conditions=[{"type": "Available", "status": "False", "message": "min availability"}]),
         (False, "ReplicasUnavailable"), (True, "WaitingForReplicas"), (True, "ReplicasUnavailable")),
        (dep(1, 0, conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                "message": "timed out"}]),
         (False, "ReplicasUnavailable"), (True, "WaitingForReplicas"), (True, "RolloutStalled")),
        ({"metadata": {"generation": 3}, "spec": {"replicas": 1}, "status": {"observedGeneration": 2}},
         (False, "ReplicasUnavailable"), (True, "RollingOut"), (False, "AsExpected")),
    ],
)  # fmt: skip
def test_workload_conditions(deployment: dict, ready: tuple, progressing: tuple, degraded: tuple) -> None:
    conds = {c.type: (c.status, c.reason.value) for c in workload_conditions(Rollout.of(deployment))}
    assert conds[ConditionType.READY] == ready
    assert conds[ConditionType.PROGRESSING] == progressing
    assert conds[ConditionType.DEGRADED] == degraded


def test_transition_time_kept_while_status_is_unchanged() -> None:
    first = merge_conditions(None, [Cond(ConditionType.READY, False, Reason.REPLICAS_UNAVAILABLE)], 1, "t1")
    same = merge_conditions(first, [Cond(ConditionType.READY, False, Reason.WAITING_FOR_REPLICAS)], 2, "t2")
    flipped = merge_conditions(same, [Cond(ConditionType.READY, True, Reason.AVAILABLE)], 2, "t3")
    assert first[0]["lastTransitionTime"] == same[0]["lastTransitionTime"] == "t1"
    assert same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "t3"


BUNDLED = {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "m"}

INVALID: list[tuple[type, str, dict[str, Any], Reason]] = [
    (ModelPoolSpec, "p", {}, Reason.SPEC_INVALID),
    (ModelPoolSpec, "p", {"model": BUNDLED, "replicas": -1}, Reason.SPEC_INVALID),
    (ModelPoolSpec, "p", {"model": {"uri": "s3://bucket/m", "servedModelName": "m"}}, Reason.MODEL_SOURCE_INVALID),
    (ModelPoolSpec, "p", {"model": {"uri": "bundled:llama-405b", "servedModelName": "m"}}, Reason.MODEL_SOURCE_INVALID),
    (ModelPoolSpec, "p", {"model": {"uri": "pvc://claim-only", "servedModelName": "m"}}, Reason.MODEL_SOURCE_INVALID),
    (ModelPoolSpec, "p", {"model": BUNDLED, "engine": {"speculation": {"method": "draft"}}},
     Reason.FEATURE_NOT_SUPPORTED),
    (ModelPoolSpec, "p", {"model": BUNDLED, "adapters": [{"name": "a", "uri": "file:///a"}]},
     Reason.FEATURE_NOT_SUPPORTED),
    (ModelPoolSpec, "p", {"model": BUNDLED, "resources": {"requests": {"nvidia.com/gpu": 1}}},
     Reason.RESOURCES_INVALID),
    (ModelPoolSpec, "p", {"model": BUNDLED, "engine": {"device": "cuda"}}, Reason.RESOURCES_INVALID),
    (ModelPoolSpec, "p", {"model": BUNDLED, "autoscaling": {"minReplicas": 4, "maxReplicas": 2}},
     Reason.AUTOSCALING_INVALID),
    (ModelPoolSpec, "Bad_Name", {"model": BUNDLED}, Reason.SPEC_INVALID),
    (RouterSpec, "r", {"pools": [{"name": "a"}], "routes": [{"model": "x", "pool": "b"}]}, Reason.ROUTES_INVALID),
    (RouterSpec, "r", {"pools": [{"name": "a"}], "routes": [{"model": "x"}]}, Reason.ROUTES_INVALID),
    (RouterSpec, "r", {"pools": [{"name": "a"}, {"name": "a"}]}, Reason.SPEC_INVALID),
    (AgentProgramSpec, "ap", {"router": "r", "model": "m", "sandbox": {"image": "i", "command": ["c"]}},
     Reason.SANDBOX_INVALID),
    (AgentProgramSpec, "ap", {"router": "r", "model": "m", "tools": [{"name": "t", "command": ["x"]}]},
     Reason.SANDBOX_INVALID),
]  # fmt: skip


@pytest.mark.parametrize(("model", "name", "spec", "reason"), INVALID)
def test_invalid_specs_name_their_reason(model: type, name: str, spec: dict, reason: Reason) -> None:
    with pytest.raises(SpecRejected) as err:
        validate_spec(model, {"metadata": {"name": name}, "spec": spec})
    assert err.value.reason == reason
    assert err.value.message and "\n" not in err.value.message
