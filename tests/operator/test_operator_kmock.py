"""The real operator (``shoal operator`` = kopf) against the kmock API emulator.

Each test uses its own namespace. kmock has no controllers, so tests play the Deployment
controller where readiness matters (they patch the Deployment's status).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from shoal.operator.kube import (
    AGENTPROGRAMS,
    CONFIGMAPS,
    DEPLOYMENTS,
    EVENTS,
    HPAS,
    MODELPOOLS,
    PDBS,
    ROLEBINDINGS,
    ROLES,
    ROUTERS,
    SERVICEACCOUNTS,
    SERVICES,
)
from support.api import Api, OperatorProcess, condition, wait_for
from support.custom_resources import config_hash, load, pool, program, reason_of, router

pytestmark = pytest.mark.integration


def test_examples_become_children_and_status(api: Api, operator: OperatorProcess) -> None:
    ns = "examples"
    for doc in load("modelpool-smollm2.yaml") + load("modelpool-gpu-autoscaled.yaml") + load("router.yaml"):
        api.create(doc, ns)
    for doc in load("agentprogram.yaml"):
        api.create(doc, ns)

    for pool_name in ("smollm2", "qwen-7b"):
        for rt in (DEPLOYMENTS, SERVICES, PDBS):
            wait_for(lambda rt=rt, p=pool_name: api.get(rt, ns, f"{p}-engine"), what=f"{rt.kind} {pool_name}")
    wait_for(lambda: api.get(HPAS, ns, "qwen-7b-engine"), what="HPA")
    assert api.get(HPAS, ns, "smollm2-engine") is None
    for rt in (SERVICEACCOUNTS, ROLES, ROLEBINDINGS, CONFIGMAPS, DEPLOYMENTS, SERVICES):
        wait_for(lambda rt=rt: api.get(rt, ns, "shoal-router"), what=f"router {rt.kind}")

    dep = api.get(DEPLOYMENTS, ns, "smollm2-engine")
    assert dep is not None and dep["spec"]["replicas"] == 2
    owner = dep["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ModelPool" and owner["uid"] == api.get(MODELPOOLS, ns, "smollm2")["metadata"]["uid"]

    # The AgentProgram is in its router's classes file, and Ready once the router loaded it.
    wait_for(lambda: reason_of(api, AGENTPROGRAMS, ns, "coder", "Ready") == "Available", what="program Ready")
    classes = yaml.safe_load(api.get(CONFIGMAPS, ns, "shoal-router-classes")["data"]["classes.yaml"])["classes"]
    assert [c["name"] for c in classes] == ["coder"] and classes[0]["priority"] == 70
    assert classes[0]["sandbox"]["image"] == "python:3.12-slim"
    # Its sandbox is a pod: the router's Role allows exactly the sandbox backend's calls.
    rules = api.get(ROLES, ns, "shoal-router")["rules"]
    assert {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]} in rules
    cm = api.get(CONFIGMAPS, ns, "shoal-router")
    assert cm is not None and set(cm["data"]) == {"router.yaml"}
    router_yaml = yaml.safe_load(cm["data"]["router.yaml"])
    assert [p["name"] for p in router_yaml["pools"]] == ["smollm2", "qwen-7b"]

    # Play the Deployment controller: the pool turns Ready with readyReplicas from the child.
    status = {"observedGeneration": 1, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}
    api.patch(DEPLOYMENTS, ns, "smollm2-engine", {"status": status}, status=True)
    wait_for(lambda: reason_of(api, MODELPOOLS, ns, "smollm2", "Ready") == "Available", what="pool Ready")
    pool_status = api.get(MODELPOOLS, ns, "smollm2")["status"]
    assert pool_status["readyReplicas"] == 2
    assert pool_status["observedGeneration"] == 1
    assert pool_status["selector"] == "app.kubernetes.io/component=engine,shoal.dev/pool=smollm2"
    assert pool_status["endpoints"] == ["http://smollm2-engine.examples.svc:8000"]

    # The router's timer reports per-pool endpoint counts.
    def pools_seen() -> dict[str, int] | None:
        st = api.get(ROUTERS, ns, "shoal")["status"]
        counts = {p["name"]: p["readyEndpoints"] for p in st.get("pools") or []}
        return counts if counts.get("smollm2") == 2 else None

    assert wait_for(pools_seen, what="router pool counts") == {"smollm2": 2, "qwen-7b": 0}
    assert reason_of(api, ROUTERS, ns, "shoal") == "PoolNotReady"
    assert not api.get(MODELPOOLS, ns, "smollm2")["metadata"].get("finalizers")


def test_replicas_and_config_changes_roll_out(api: Api, operator: OperatorProcess) -> None:
    ns = "changes"
    api.create(pool("chat"), ns)
    api.create(router("front", pools=[{"name": "chat"}]), ns)
    wait_for(lambda: api.get(DEPLOYMENTS, ns, "chat-engine"), what="pool deployment")
    first = wait_for(lambda: config_hash(api, ns, "front"), what="router deployment")

    api.patch(MODELPOOLS, ns, "chat", {"spec": {"replicas": 3}})
    wait_for(lambda: api.get(DEPLOYMENTS, ns, "chat-engine")["spec"]["replicas"] == 3, what="scaled to 3")
    wait_for(lambda: (api.get(MODELPOOLS, ns, "chat")["status"] or {}).get("observedGeneration") == 2)

    # A router spec change renders a new config: the hash annotation changes (pods roll).
    api.patch(ROUTERS, ns, "front", {"spec": {"logLevel": "debug"}})
    second = wait_for(lambda: (h := config_hash(api, ns, "front")) != first and h, what="new config hash")
    assert yaml.safe_load(api.get(CONFIGMAPS, ns, "front-router")["data"]["router.yaml"])["logLevel"] == "debug"

    # A pool's served name is in the router's config too: renaming it re-renders the router.
    api.patch(MODELPOOLS, ns, "chat", {"spec": {"model": {"servedModelName": "renamed"}}})
    wait_for(lambda: (h := config_hash(api, ns, "front")) not in (first, second) and h, what="hash after rename")
    router_yaml = yaml.safe_load(api.get(CONFIGMAPS, ns, "front-router")["data"]["router.yaml"])
    assert router_yaml["pools"][0]["models"] == ["renamed"]

    # Autoscaling on: an HPA appears; off again: it is removed.
    api.patch(MODELPOOLS, ns, "chat", {"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}})
    wait_for(lambda: api.get(HPAS, ns, "chat-engine"), what="HPA")
    api.patch(MODELPOOLS, ns, "chat", {"spec": {"autoscaling": None}})
    wait_for(lambda: api.get(HPAS, ns, "chat-engine") is None, what="HPA removed")


def test_valid_then_invalid_spec_is_degraded_and_keeps_children(api: Api, operator: OperatorProcess) -> None:
    ns = "degrade"
    api.create(pool("chat", replicas=2), ns)
    wait_for(lambda: api.get(DEPLOYMENTS, ns, "chat-engine"), what="deployment")
    api.patch(MODELPOOLS, ns, "chat", {"spec": {"replicas": 5, "engine": {"speculation": {"method": "draft"}}}})
    wait_for(lambda: reason_of(api, MODELPOOLS, ns, "chat") == "FeatureNotSupported", what="Degraded")
    status = api.get(MODELPOOLS, ns, "chat")["status"]
    assert condition({"status": status}, "Ready")["status"] == "False"
    # The last good children keep serving: the invalid spec changed nothing.
    assert api.get(DEPLOYMENTS, ns, "chat-engine")["spec"]["replicas"] == 2
    events = [e for e in api.list(EVENTS, ns) if e["involvedObject"]["name"] == "chat"]
    assert any(e["reason"] == "FeatureNotSupported" and e["type"] == "Warning" for e in events)
    # Fixing the spec recovers.
    api.patch(MODELPOOLS, ns, "chat", {"spec": {"engine": {"speculation": None}}})
    wait_for(lambda: api.get(DEPLOYMENTS, ns, "chat-engine")["spec"]["replicas"] == 5, what="recovered")
    wait_for(lambda: reason_of(api, MODELPOOLS, ns, "chat") is None, what="not Degraded")


def test_router_waits_for_its_pool(api: Api, operator: OperatorProcess) -> None:
    ns = "late-pool"
    api.create(router("front", pools=[{"name": "chat"}]), ns)
    wait_for(lambda: reason_of(api, ROUTERS, ns, "front") == "PoolNotFound", what="PoolNotFound")
    assert api.get(CONFIGMAPS, ns, "front-router") is None
    api.create(pool("chat"), ns)
    wait_for(lambda: api.get(DEPLOYMENTS, ns, "front-router"), what="router created once its pool exists")


def test_delete_cleans_up_children(api: Api, operator: OperatorProcess) -> None:
    ns = "cleanup"
    api.create(pool("chat", autoscaling={"maxReplicas": 2}), ns)
    api.create(router("front", pools=[{"name": "chat"}]), ns)
    api.create(program("agents", router="front", model="chat-model"), ns)
    wait_for(lambda: api.get(HPAS, ns, "chat-engine") and api.get(DEPLOYMENTS, ns, "front-router"), what="children")
    wait_for(lambda: reason_of(api, AGENTPROGRAMS, ns, "agents", "Ready") == "Available", what="program")

    api.delete(AGENTPROGRAMS, ns, "agents")

    def program_gone() -> bool:
        cm = api.get(CONFIGMAPS, ns, "front-router-classes")
        return cm is not None and yaml.safe_load(cm["data"]["classes.yaml"])["classes"] == []

    wait_for(program_gone, what="program removed from the router config")

    api.delete(MODELPOOLS, ns, "chat")
    api.delete(ROUTERS, ns, "front")
    for rt in (DEPLOYMENTS, SERVICES, PDBS, HPAS, CONFIGMAPS, SERVICEACCOUNTS, ROLES, ROLEBINDINGS):
        wait_for(lambda rt=rt: not api.list(rt, ns), what=f"{rt.kind} cleaned up")


OK_POOL = {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "ok-model"}
INVALID: list[tuple[dict[str, Any], str]] = [
    (pool("no-model", model=None), "SpecInvalid"),
    (pool("negative", replicas=-1), "SpecInvalid"),
    (pool("s3-source", model={"uri": "s3://bucket/llama", "servedModelName": "x"}), "ModelSourceInvalid"),
    (pool("unknown-bundle", model={"uri": "bundled:gpt-5", "servedModelName": "x"}), "ModelSourceInvalid"),
    (pool("speculative", engine={"speculation": {"method": "draft"}}), "FeatureNotSupported"),
    (pool("lora", adapters=[{"name": "a", "uri": "file:///a"}]), "FeatureNotSupported"),
    (pool("gpu-request", resources={"requests": {"nvidia.com/gpu": 1}}), "ResourcesInvalid"),
    (pool("bad-scaling", autoscaling={"minReplicas": 5, "maxReplicas": 2}), "AutoscalingInvalid"),
    (pool("x" * 60), "SpecInvalid"),
    (pool("no-engine-key", engine={"auth": {"apiKeySecretRef": {"name": "absent"}}}), "SecretNotFound"),
    (router("missing-pool", pools=[{"name": "ok"}, {"name": "nowhere"}]), "PoolNotFound"),
    (router("bad-route", pools=[{"name": "ok"}], routes=[{"model": "m", "pool": "other"}]), "RoutesInvalid"),
    (router("bad-scorer", pools=[{"name": "ok"}], picking={"scorers": [{"type": "astrology"}]}), "SpecInvalid"),
    (router("no-secret", pools=[{"name": "ok"}], auth={"apiKeysSecret": {"name": "absent"}}), "SecretNotFound"),
    (program("orphan", router="nowhere", model="ok-model"), "RouterNotFound"),
    (program("two-sandboxes", router="ok", model="ok-model", sandbox={"image": "i", "command": ["c"]}),
     "SandboxInvalid"),
    (program("wrong-model", router="ok", model="gpt-9"), "ModelNotServed"),
    (program("local-sandbox", router="ok", model="ok-model", sandbox={"command": ["true"]}), "FeatureNotSupported"),
    (router("inline-classes", pools=[{"name": "ok"}], programs={"classesFile": "/x"}), "FeatureNotSupported"),
]  # fmt: skip


def test_invalid_specs_get_conditions_and_no_children(api: Api, operator: OperatorProcess) -> None:
    ns = "invalid"
    api.create(pool("ok", model=OK_POOL), ns)
    api.create(router("ok", pools=[{"name": "ok"}]), ns)
    wait_for(lambda: api.get(DEPLOYMENTS, ns, "ok-router"), what="the valid router")
    for doc, _ in INVALID:
        api.create(copy.deepcopy(doc), ns)
    kinds = {"ModelPool": MODELPOOLS, "Router": ROUTERS, "AgentProgram": AGENTPROGRAMS}
    for doc, reason in INVALID:
        name, rt = doc["metadata"]["name"], kinds[doc["kind"]]
        wait_for(lambda name=name, rt=rt, reason=reason: reason_of(api, rt, ns, name) == reason,
                 what=f"{doc['kind']} {name}: Degraded {reason} (got {reason_of(api, rt, ns, name)})")  # fmt: skip
        obj = api.get(rt, ns, name)
        assert condition(obj, "Ready")["status"] == "False"
        assert condition(obj, "Ready")["reason"] == reason
    names = {d["metadata"]["name"] for d, _ in INVALID}
    for rt in (DEPLOYMENTS, SERVICES, CONFIGMAPS, PDBS, HPAS):
        children = {o["metadata"]["name"].rsplit("-", 1)[0] for o in api.list(rt, ns)}
        assert not children & names, f"{rt.kind} created for an invalid spec: {children & names}"
    warned = {(e["involvedObject"]["name"], e["reason"]) for e in api.list(EVENTS, ns) if e["type"] == "Warning"}
    assert {(d["metadata"]["name"], r) for d, r in INVALID} <= warned
    # The operator keeps running and reconciling.
    assert operator.alive()
    api.create(pool("after", model={**OK_POOL, "servedModelName": "after"}), ns)
    wait_for(lambda: api.get(DEPLOYMENTS, ns, "after-engine"), what="a valid pool after the invalid ones")


def test_engine_api_key_becomes_the_routers_upstream_credential(api: Api, operator: OperatorProcess) -> None:
    # (A missing Secret is in INVALID: the pool waits with SecretNotFound and creates nothing.)
    ns = "engine-key"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "engine-key"}, "stringData": {"token": "k"}}
    api.create(secret, ns)
    auth = {"auth": {"apiKeySecretRef": {"name": "engine-key", "key": "token"}}}
    api.create(pool("chat", engine=auth), ns)
    api.create(router("front", pools=[{"name": "chat"}]), ns)
    dep = wait_for(lambda: api.get(DEPLOYMENTS, ns, "chat-engine"), what="pool deployment")
    ref = {"secretKeyRef": {"name": "engine-key", "key": "token"}}
    assert {"name": "SHOAL_API_KEY", "valueFrom": ref} in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    router_dep = wait_for(lambda: api.get(DEPLOYMENTS, ns, "front-router"), what="router deployment")
    router_env = router_dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "SHOAL_UPSTREAM_API_KEY", "valueFrom": ref} in router_env
    router_yaml = yaml.safe_load(api.get(CONFIGMAPS, ns, "front-router")["data"]["router.yaml"])
    assert router_yaml["upstream"] == {"apiKeyEnv": "SHOAL_UPSTREAM_API_KEY"}
