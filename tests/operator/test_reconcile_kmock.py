"""Level-based reconciliation (issue 12, acceptance 1): the real operator against its own kmock
API server, with a one-second resync.

Deleted children come back, hand edits of fields Shoal sets are reverted (fields it does not set
stay), converging unchanged children writes nothing (resourceVersions stay, across resyncs and an
operator restart), and a child the API server refuses becomes a condition and an Event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.operator.children import backoff, covers, stamped
from shoal.operator.kube import (
    CONFIGMAPS,
    DEPLOYMENTS,
    EVENTS,
    HPAS,
    MODELPOOLS,
    PDBS,
    ROLEBINDINGS,
    ROLES,
    ROUTERS,
    SECRETS,
    SERVICEACCOUNTS,
    SERVICES,
)
from shoal.operator.status import Rollout, workload_conditions
from support.api import Api, OperatorProcess, condition, wait_for
from support.custom_resources import pool, router
from support.kmock_cluster import KmockCluster

pytestmark = pytest.mark.integration

RESYNC = 0.5
CHILD_TYPES = (DEPLOYMENTS, SERVICES, PDBS, HPAS, CONFIGMAPS, SERVICEACCOUNTS, ROLES, ROLEBINDINGS)
POOL_CHILDREN = [(DEPLOYMENTS, "chat-engine"), (SERVICES, "chat-engine"), (PDBS, "chat-engine")]
ROUTER_CHILDREN = [(rt, "front-router") for rt in (SERVICEACCOUNTS, ROLES, ROLEBINDINGS, CONFIGMAPS, DEPLOYMENTS,
                                                   SERVICES)] + [(CONFIGMAPS, "front-router-classes")]  # fmt: skip


class Operator:
    """``shoal operator`` that a test can restart."""

    def __init__(self, kubeconfig: Path, logs: Path) -> None:
        self.kubeconfig, self.logs, self.starts = kubeconfig, logs, 0
        self.proc: OperatorProcess | None = None

    def start(self) -> None:
        self.starts += 1
        env = {"SHOAL_RESYNC_INTERVAL": str(RESYNC), "SHOAL_PROGRAM_STATUS_INTERVAL": "5"}
        self.proc = OperatorProcess(self.kubeconfig, self.logs / f"operator-{self.starts}.log", env).__enter__()
        proc = self.proc
        wait_for(lambda: "Activity 'startup' succeeded" in proc.log() or not proc.alive(), 60, what="operator startup")
        assert proc.alive(), proc.log()[-3000:]

    def stop(self) -> None:
        if self.proc is not None:
            assert self.proc.alive(), "the operator died:\n" + self.proc.log()[-3000:]
            self.proc.__exit__(None, None, None)
            self.proc = None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmockCluster]:
    with KmockCluster(tmp_path_factory.mktemp("kmock-reconcile")) as k:
        yield k


@pytest.fixture(scope="module")
def api(cluster: KmockCluster) -> Iterator[Api]:
    client = Api(cluster.url)
    client.install_crds()
    yield client
    client.close()


@pytest.fixture(scope="module")
def operator(cluster: KmockCluster, api: Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator-reconcile"))
    op.start()
    yield op
    op.stop()


def pool_and_router(api: Api, ns: str, **pool_spec: Any) -> None:
    api.create(pool("chat", **pool_spec), ns)
    api.create(router("front", pools=[{"name": "chat"}]), ns)
    for rt, name in POOL_CHILDREN + ROUTER_CHILDREN:
        wait_for(lambda rt=rt, name=name: api.get(rt, ns, name), what=f"{rt.kind} {name}")
    wait_for(lambda: (api.get(ROUTERS, ns, "front")["status"] or {}).get("configHash"), what="router status")


def versions(api: Api, ns: str) -> dict[tuple[str, str], str]:
    """resourceVersion of every child and owner in the namespace."""
    out = {}
    for rt in (*CHILD_TYPES, MODELPOOLS, ROUTERS):
        for obj in api.list(rt, ns):
            out[(rt.kind, obj["metadata"]["name"])] = obj["metadata"]["resourceVersion"]
    return out


def test_deleted_children_are_recreated(api: Api, operator: Operator) -> None:
    ns = "recreate"
    pool_and_router(api, ns)
    for rt, name in [*POOL_CHILDREN, (CONFIGMAPS, "front-router"), (SERVICES, "front-router"), (ROLES, "front-router")]:
        uid = api.get(rt, ns, name)["metadata"]["uid"]
        api.delete(rt, ns, name)
        wait_for(lambda rt=rt, name=name, uid=uid: (o := api.get(rt, ns, name)) and o["metadata"]["uid"] != uid,
                 timeout=5 * RESYNC, what=f"{rt.kind} {name} recreated")  # fmt: skip
    # The pool's status follows the new Deployment (no replica ready yet), never "scaled to zero".
    ready = condition(api.get(MODELPOOLS, ns, "chat"), "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "ReplicasUnavailable")
    # Secrets are not watched (no cluster-wide Secret reads): the resync alone brings this one back.
    api.patch(ROUTERS, ns, "front", {"spec": {"replicas": 2}})
    uid = wait_for(lambda: (o := api.get(SECRETS, ns, "front-router-peers")) and o["metadata"]["uid"], what="secret")
    api.delete(SECRETS, ns, "front-router-peers")
    wait_for(lambda: (o := api.get(SECRETS, ns, "front-router-peers")) and o["metadata"]["uid"] != uid,
             timeout=3 * RESYNC, what="peer Secret recreated by the resync")  # fmt: skip


def test_hand_edits_of_owned_fields_are_reverted(api: Api, operator: Operator) -> None:
    ns = "hand-edits"
    pool_and_router(api, ns)
    config = api.get(CONFIGMAPS, ns, "front-router")["data"]["router.yaml"]
    # A field Shoal does not set is someone else's: it stays through every revert below.
    api.patch(DEPLOYMENTS, ns, "front-router", {"metadata": {"annotations": {"team.example/owner": "ml"}}})

    api.patch(DEPLOYMENTS, ns, "front-router", {"spec": {"replicas": 3}})
    api.patch(CONFIGMAPS, ns, "front-router", {"data": {"router.yaml": "logLevel: debug\n"}})
    api.patch(SERVICES, ns, "front-router", {"spec": {"type": "LoadBalancer"}})
    api.patch(DEPLOYMENTS, ns, "chat-engine", {"spec": {"replicas": 7}})
    wait_for(lambda: api.get(DEPLOYMENTS, ns, "front-router")["spec"]["replicas"] == 1, 5 * RESYNC, what="replicas")
    wait_for(lambda: api.get(CONFIGMAPS, ns, "front-router")["data"]["router.yaml"] == config, 5 * RESYNC,
             what="router.yaml")  # fmt: skip
    wait_for(lambda: api.get(SERVICES, ns, "front-router")["spec"]["type"] == "ClusterIP", 5 * RESYNC, what="type")
    wait_for(lambda: api.get(DEPLOYMENTS, ns, "chat-engine")["spec"]["replicas"] == 1, 5 * RESYNC, what="pool")
    annotations = api.get(DEPLOYMENTS, ns, "front-router")["metadata"]["annotations"]
    assert annotations["team.example/owner"] == "ml"
    # The operator's field manager owns what it applied (server-side apply).
    managers = {m["manager"] for m in api.get(DEPLOYMENTS, ns, "front-router")["metadata"]["managedFields"]}
    assert "shoal-operator" in managers


def test_converging_unchanged_children_writes_nothing_even_after_a_restart(api: Api, operator: Operator) -> None:
    ns = "steady"
    pool_and_router(api, ns, autoscaling={"minReplicas": 1, "maxReplicas": 3})
    wait_for(lambda: api.get(HPAS, ns, "chat-engine"), what="HPA")
    time.sleep(2 * RESYNC)  # the first reconciles and the events they caused settle
    before = versions(api, ns)
    # An owner change that leaves the children as they are (a label): reconciled, nothing applied.
    api.patch(MODELPOOLS, ns, "chat", {"metadata": {"labels": {"team": "ml"}}})
    time.sleep(3 * RESYNC)  # three resyncs
    after = versions(api, ns)
    children = {k: v for k, v in before.items() if k[0] not in ("ModelPool", "Router")}
    assert {k: after[k] for k in children} == children
    assert after[("Router", "front")] == before[("Router", "front")]  # no status rewritten either

    operator.stop()
    operator.start()
    time.sleep(3 * RESYNC)  # resumed, then three resyncs
    again = versions(api, ns)
    assert {k: again[k] for k in children} == children  # nothing re-applied, nothing duplicated
    assert set(again) == set(after)


def test_a_child_the_api_refuses_becomes_a_condition_and_an_event(
    api: Api, operator: Operator, cluster: KmockCluster
) -> None:
    ns = "refused"
    why = 'spec.template.spec.containers[0].resources.requests[memory]: Invalid value: "lots"'
    cluster.reject("deployments", ns, "bad-engine", why)
    api.create(pool("bad"), ns)
    wait_for(lambda: (c := condition(api.get(MODELPOOLS, ns, "bad"), "Degraded")) and c["reason"] == "ChildRejected",
             what="Degraded ChildRejected")  # fmt: skip
    pool_body = api.get(MODELPOOLS, ns, "bad")
    degraded, ready = condition(pool_body, "Degraded"), condition(pool_body, "Ready")
    assert degraded["status"] == "True" and "HTTP 422" in degraded["message"] and why in degraded["message"]
    assert degraded["message"].startswith("Deployment bad-engine: ")
    assert (ready["status"], ready["reason"]) == ("False", "ChildRejected")
    assert api.get(SERVICES, ns, "bad-engine") is not None  # the other children were still applied
    time.sleep(2 * RESYNC)  # retried (kopf's backoff and the resync): the same problem, one Event
    events = [e for e in api.list(EVENTS, ns) if e["involvedObject"]["name"] == "bad" and e["reason"] == "ChildRejected"]
    assert len(events) == 1 and events[0]["type"] == "Warning" and why in events[0]["message"]

    # The cause goes away: the next resync creates the Deployment and clears the condition.
    cluster.accept("deployments", ns, "bad-engine")
    wait_for(lambda: api.get(DEPLOYMENTS, ns, "bad-engine"), 5 * RESYNC, what="created once accepted")
    wait_for(lambda: condition(api.get(MODELPOOLS, ns, "bad"), "Degraded")["status"] == "False", what="not Degraded")

    # A Deployment deleted while the API refuses a new one: Degraded with the error, not "scaled to zero".
    cluster.reject("deployments", ns, "bad-engine", why)
    api.delete(DEPLOYMENTS, ns, "bad-engine")
    wait_for(lambda: condition(api.get(MODELPOOLS, ns, "bad"), "Ready")["reason"] == "ChildRejected",
             5 * RESYNC, what="missing Deployment reported")  # fmt: skip
    cluster.accept("deployments", ns, "bad-engine")


def test_a_refused_router_child_stays_reported_while_its_pools_change(
    api: Api, operator: Operator, cluster: KmockCluster
) -> None:
    ns = "refused-router"
    pool_and_router(api, ns)
    why = "data: Too long: must have at most 1048576 bytes"
    cluster.reject("configmaps", ns, "front-router", why)
    api.patch(ROUTERS, ns, "front", {"spec": {"logLevel": "debug"}})  # a new config the API refuses
    wait_for(lambda: (c := condition(api.get(ROUTERS, ns, "front"), "Degraded")) and c["reason"] == "ChildRejected",
             what="router Degraded ChildRejected")  # fmt: skip
    assert why in condition(api.get(ROUTERS, ns, "front"), "Degraded")["message"]
    # The pool's readiness changes (the router recounts its endpoints): the refusal stays reported.
    status = {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}
    api.patch(DEPLOYMENTS, ns, "chat-engine", {"status": status}, status=True)
    wait_for(lambda: (api.get(MODELPOOLS, ns, "chat")["status"] or {}).get("readyReplicas") == 1, what="pool ready")
    time.sleep(2 * RESYNC)
    assert condition(api.get(ROUTERS, ns, "front"), "Degraded")["reason"] == "ChildRejected"
    # Never flipped back in between: a flip and its return would have posted a second Event.
    events = [e for e in api.list(EVENTS, ns) if e["involvedObject"]["name"] == "front" and e["reason"] == "ChildRejected"]
    assert len(events) == 1
    cluster.accept("configmaps", ns, "front-router")
    wait_for(lambda: condition(api.get(ROUTERS, ns, "front"), "Degraded")["reason"] != "ChildRejected",
             5 * RESYNC, what="router recovered")  # fmt: skip


def test_a_missing_deployment_is_never_scaled_to_zero() -> None:
    conds = {c.type.value: (c.status, c.reason.value) for c in workload_conditions(Rollout.of(None))}
    assert conds == {"Ready": (False, "ChildMissing"), "Progressing": (True, "Reconciling"),
                     "Degraded": (True, "ChildMissing")}  # fmt: skip


def test_covers_ignores_fields_others_set_but_not_changed_ones() -> None:
    desired: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n", "labels": {"a": "1"}},
               "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}}  # fmt: skip
    live = stamped(desired)
    live["metadata"]["resourceVersion"] = "9"
    live["spec"]["ports"][0]["protocol"] = "TCP"  # a server default
    live["spec"]["clusterIP"] = "10.0.0.1"
    assert covers(live, stamped(desired))
    edited = {**live, "spec": {**live["spec"], "type": "LoadBalancer"}}
    assert not covers(edited, stamped(desired))
    # A field Shoal stopped setting changes the hash: the next apply is not skipped.
    shorter = {**desired, "metadata": {**desired["metadata"], "labels": {}}}
    assert not covers(live, stamped(shorter))
    assert [backoff(15, r) for r in (0, 1, 2, 10)] == [15, 30, 60, 300]
    # Quantities the API server stores in canonical form are not a difference (no endless re-apply).
    resources = {"resources": {"limits": {"cpu": 4, "memory": "1.5Gi"}, "requests": {"cpu": "0.5"}}}
    canonical = {"resources": {"limits": {"cpu": "4", "memory": "1536Mi"}, "requests": {"cpu": "500m"}}}
    assert covers(canonical, resources)
    assert not covers({"resources": {**canonical["resources"], "requests": {"cpu": "1"}}}, resources)
    assert not covers({"image": "1"}, {"image": "1.0"})  # only resource quantities compare by amount


def test_the_emulator_applies_server_side(api: Api) -> None:
    """The kmock emulator's minimal server-side apply, which the scenarios above rely on."""
    ns = "ssa"

    def apply(obj: dict[str, Any]) -> dict[str, Any]:
        resp = api.http.patch(CONFIGMAPS.path(ns, "cm"), params={"fieldManager": "shoal-operator", "force": "true"},
                              content=json.dumps(obj), headers={"Content-Type": "application/apply-patch+yaml"})  # fmt: skip
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    cm: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": ns,
          "labels": {"a": "1", "b": "2"}}, "data": {"k": "v"}}  # fmt: skip
    created = apply(cm)
    [entry] = created["metadata"]["managedFields"]
    assert (entry["manager"], entry["operation"]) == ("shoal-operator", "Apply")
    assert entry["fieldsV1"]["f:data"] == {"f:k": {}}
    api.patch(CONFIGMAPS, ns, "cm", {"data": {"other": "x"}})  # another writer's key
    version = api.get(CONFIGMAPS, ns, "cm")["metadata"]["resourceVersion"]
    assert apply(cm)["metadata"]["resourceVersion"] == version  # nothing changed: no write
    dropped = apply({**cm, "metadata": {**cm["metadata"], "labels": {"a": "1"}}})
    assert dropped["metadata"]["labels"] == {"a": "1"}  # a field the manager stopped applying goes
    assert dropped["data"] == {"k": "v", "other": "x"}  # another writer's field stays
