"""Scale to zero, operator side (pure parts): when a pool scales, what the routers' answers mean,
and what the builders render for a minReplicas-0 pool."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shoal.crds import ModelPoolSpec, RouterSpec
from shoal.crds.modelpool import Autoscaling
from shoal.operator.builders.common import Images, Owner
from shoal.operator.builders.modelpool import KEDA_PAUSED_REPLICAS, pool_children
from shoal.operator.builders.router_config import render_router_config
from shoal.operator.scale_to_zero import (
    Demand,
    DemandUnavailable,
    decide,
    merge,
    parse_demand,
    scaled_to_zero,
)

ZERO = Autoscaling(min_replicas=0, max_replicas=4, scale_to_zero_after_seconds=60)


@pytest.mark.parametrize(
    ("replicas", "demand", "complete", "expected"),
    [
        (0, Demand(waiting=1), True, 1),  # a held request wakes the pool
        (0, Demand(waiting=1), False, 1),  # one router asking is enough to scale up
        (0, Demand(inflight=1), True, 1),
        (0, Demand(idle_seconds=999), True, None),  # nothing to do at zero without demand
        (2, Demand(idle_seconds=60), True, 0),  # idle long enough at every router
        (2, Demand(idle_seconds=59.9), True, None),
        (2, Demand(idle_seconds=600), False, None),  # a router did not answer: never read as idle
        (2, Demand(inflight=1, idle_seconds=600), True, None),
        (1, None, True, None),  # no router answered
        (0, None, True, None),
    ],
)
def test_decide(replicas: int, demand: Demand | None, complete: bool, expected: int | None) -> None:
    assert decide(replicas, ZERO, demand, complete) == expected


def test_pools_with_a_floor_are_never_touched() -> None:
    floor = Autoscaling(min_replicas=1, max_replicas=4)
    assert decide(0, floor, Demand(waiting=5), True) is None
    assert decide(3, floor, Demand(idle_seconds=1e6), True) is None


def test_default_idle_time_and_validation() -> None:
    assert Autoscaling(min_replicas=0, max_replicas=1).idle_seconds == 300
    with pytest.raises(ValidationError, match="scaleToZeroAfterSeconds needs minReplicas 0"):
        Autoscaling(max_replicas=2, scale_to_zero_after_seconds=30)
    with pytest.raises(ValidationError):
        Autoscaling(min_replicas=0, max_replicas=2, scale_to_zero_after_seconds=0)


def test_merge_adds_counts_and_keeps_the_shortest_idle_time() -> None:
    merged = merge([Demand(1, 0, 0.0), Demand(0, 2, 30.0), Demand(0, 0, 500.0)])
    assert merged == Demand(waiting=1, inflight=2, idle_seconds=0.0)
    assert merge([Demand(0, 0, 40.0), Demand(0, 0, 90.0)]).idle_seconds == 40.0


def test_parse_demand() -> None:
    payload = {"pools": [{"pool": "chat", "waiting": 2, "inflight": 1, "ready_endpoints": 0, "idle_seconds": 0.5}]}
    assert parse_demand(payload) == {"chat": Demand(2, 1, 0.5)}
    for bad in ({}, {"pools": None}, {"pools": [{"pool": "x"}]}, {"pools": [{"pool": 1, "waiting": 0,
                "inflight": 0, "idle_seconds": 0}]}, {"pools": [{"pool": "x", "waiting": True, "inflight": 0,
                "idle_seconds": 0}]}):  # fmt: skip
        with pytest.raises(DemandUnavailable):
            parse_demand(bad)


def _spec(replicas: int, **autoscaling: Any) -> ModelPoolSpec:
    return ModelPoolSpec.model_validate({
        "model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "m"}, "replicas": replicas,
        "autoscaling": {"minReplicas": 0, "maxReplicas": 3, **autoscaling},
    })  # fmt: skip


OWNER = Owner("ModelPool", "chat", "ns", "uid-1")


def _child(children: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(c for c in children if c["kind"] == kind)


def test_autoscalers_of_a_pool_that_scales_to_zero() -> None:
    at_zero = pool_children(OWNER, _spec(0), Images(), keda=False)
    assert _child(at_zero, "Deployment")["spec"]["replicas"] == 0
    assert _child(at_zero, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 1  # 0 needs an alpha gate
    keda_zero = _child(pool_children(OWNER, _spec(0), Images(), keda=True), "ScaledObject")
    assert keda_zero["spec"]["minReplicaCount"] == 1
    assert keda_zero["metadata"]["annotations"] == {KEDA_PAUSED_REPLICAS: "0"}  # KEDA would raise it to 1
    keda_up = _child(pool_children(OWNER, _spec(2), Images(), keda=True), "ScaledObject")
    assert KEDA_PAUSED_REPLICAS not in keda_up["metadata"].get("annotations", {})


def test_router_config_holds_requests_only_for_pools_that_scale_to_zero() -> None:
    router = RouterSpec.model_validate({"pools": [{"name": "zero"}, {"name": "fixed"}]})
    fixed = ModelPoolSpec.model_validate({"model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "f"}})
    config = render_router_config(router, {"zero": _spec(0), "fixed": fixed}, lambda p: {"static": ["http://e:8000"]})
    pools = {p["name"]: p for p in config["pools"]}
    assert pools["zero"]["coldStart"] == {"maxWaiting": 256, "timeoutS": 300.0}
    assert "coldStart" not in pools["fixed"]


def test_a_pool_at_zero_on_purpose_does_not_degrade_its_routers() -> None:
    def body(reason: str) -> dict[str, Any]:
        return {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": reason}]}}

    assert scaled_to_zero(body("ScaledToZero"))
    assert not scaled_to_zero(body("ReplicasUnavailable")) and not scaled_to_zero(None) and not scaled_to_zero({})
