"""The real operator (``shoal operator`` = kopf) against the kmock API emulator.

Each test uses its own namespace. kmock has no controllers, so tests play the Deployment
controller where readiness matters (they patch the Deployment's status).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.operator.builders.router import DISCOVERY_RULES, SANDBOX_RULES
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
    SECRETS,
    SERVICEACCOUNTS,
    SERVICES,
)
from support.api import Api, OperatorProcess, condition, wait_for
from support.fake_router import FakeRouters

EXAMPLES = Path(__file__).resolve().parents[2] / "crds" / "examples"
pytestmark = pytest.mark.integration


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def pool(name: str, **spec: Any) -> dict[str, Any]:
    base = {"model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": f"{name}-model"}, "replicas": 1}
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelPool", "metadata": {"name": name},
            "spec": {**base, **spec}}  # fmt: skip


def router(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "Router", "metadata": {"name": name}, "spec": spec}


def program(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "AgentProgram", "metadata": {"name": name}, "spec": spec}


def reason_of(api: Api, rt: Any, ns: str, name: str, type_: str = "Degraded") -> str | None:
    c = condition(api.get(rt, ns, name), type_)
    return c["reason"] if c and (type_ != "Degraded" or c["status"] == "True") else None


def config_hash(api: Api, ns: str, router_name: str) -> str | None:
    dep = api.get(DEPLOYMENTS, ns, f"{router_name}-router")
    return dep["spec"]["template"]["metadata"]["annotations"]["shoal.dev/config-hash"] if dep else None


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


def test_agentprogram_goes_live_without_a_router_rollout(api: Api, operator: OperatorProcess,
                                                         routers: FakeRouters) -> None:  # fmt: skip
    """Issue 9, acceptance 4 (operator side): an AgentProgram reaches the router's classes
    ConfigMap, the router pods are not rolled, and Ready follows what the router reports."""
    ns = "live-classes"
    api.create(pool("chat"), ns)
    api.create(router("front", pools=[{"name": "chat"}], programs={"highWatermark": 0.8, "tickS": 0.25}), ns)
    digest = wait_for(lambda: config_hash(api, ns, "front"), what="router deployment")
    router_yaml = yaml.safe_load(api.get(CONFIGMAPS, ns, "front-router")["data"]["router.yaml"])
    assert router_yaml["programs"]["classesFile"] == "/etc/shoal/router-classes/classes.yaml"
    assert (router_yaml["programs"]["highWatermark"], router_yaml["programs"]["tickS"]) == (0.8, 0.25)
    with routers.lock:
        routers.frozen[(ns, "front")] = []  # the router has not reloaded its classes file yet

    sandbox = {"image": "python:3.12-slim", "resources": {"limits": {"memory": "256Mi"}}}
    tools = [{"name": "run", "command": ["python3", "-c", "print(1)"], "timeoutSeconds": 5}]
    api.create(program("agents", router="front", model="chat-model", priority=80, sandbox=sandbox, tools=tools), ns)

    def classes() -> list[dict[str, Any]]:
        cm = api.get(CONFIGMAPS, ns, "front-router-classes")
        return yaml.safe_load(cm["data"]["classes.yaml"])["classes"] if cm else []

    [cls] = wait_for(classes, what="the class in the router's classes ConfigMap")
    agents = api.get(AGENTPROGRAMS, ns, "agents")
    assert cls["owner"] == {"apiVersion": "shoal.dev/v1alpha1", "kind": "AgentProgram", "name": "agents",
                            "uid": agents["metadata"]["uid"], "namespace": ns}  # fmt: skip
    assert cls["sandbox"]["resources"]["memoryBytes"] == 256 << 20 and cls["tools"][0]["timeoutS"] == 5
    # Its sandboxes are pods: the router's Role gains exactly the sandbox rights (live, no restart).
    wait_for(lambda: api.get(ROLES, ns, "front-router")["rules"] == DISCOVERY_RULES + SANDBOX_RULES, what="Role")
    # Not loaded by the router yet: not Ready, and says why.
    wait_for(lambda: reason_of(api, AGENTPROGRAMS, ns, "agents", "Ready") == "ClassNotLoaded", what="ClassNotLoaded")
    assert condition(api.get(AGENTPROGRAMS, ns, "agents"), "Ready")["status"] == "False"
    # The router pods were not rolled: the class is not in the config hash.
    assert config_hash(api, ns, "front") == digest

    # The router reloads its file (the kubelet updated the mounted ConfigMap) and reports counts.
    with routers.lock:
        del routers.frozen[(ns, "front")]
        routers.counts[(ns, "agents")] = {"active": 3, "paused": 1, "queued": 2, "steps_per_minute": 42.5}
    wait_for(lambda: reason_of(api, AGENTPROGRAMS, ns, "agents", "Ready") == "Available", what="program Ready")
    status = wait_for(lambda: (s := api.get(AGENTPROGRAMS, ns, "agents")["status"]).get("activePrograms") == 3 and s,
                      what="program counts")  # fmt: skip
    assert (status["pausedPrograms"], status["queuedPrograms"], status["stepsPerMinute"]) == (1, 2, 42.5)
    # The counts follow the router.
    with routers.lock:
        routers.counts[(ns, "agents")] = {"active": 0, "queued": 0, "steps_per_minute": 0}
    wait_for(lambda: api.get(AGENTPROGRAMS, ns, "agents")["status"].get("activePrograms") == 0, what="new counts")

    # A spec change updates the class in place, with no rollout; while the router still runs the
    # old version the program is not Ready, and says what differs.
    loaded = routers.loaded(ns, "front")
    assert loaded is not None
    with routers.lock:
        routers.frozen[(ns, "front")] = loaded
    api.patch(AGENTPROGRAMS, ns, "agents", {"spec": {"priority": 20}})
    wait_for(lambda: [c["priority"] for c in classes()] == [20], what="class updated")
    wait_for(lambda: reason_of(api, AGENTPROGRAMS, ns, "agents", "Ready") == "ClassNotLoaded", what="old version")
    assert "older version: priority 80" in condition(api.get(AGENTPROGRAMS, ns, "agents"), "Ready")["message"]
    with routers.lock:
        del routers.frozen[(ns, "front")]
    wait_for(lambda: reason_of(api, AGENTPROGRAMS, ns, "agents", "Ready") == "Available", what="new version loaded")
    assert config_hash(api, ns, "front") == digest
    assert api.get(DEPLOYMENTS, ns, "front-router")["metadata"]["generation"] == 1
    # Deleted: gone from the file, and the router's Role no longer grants sandbox pods.
    api.delete(AGENTPROGRAMS, ns, "agents")
    wait_for(lambda: classes() == [], what="class removed")
    wait_for(lambda: api.get(ROLES, ns, "front-router")["rules"] == DISCOVERY_RULES, what="sandbox rights revoked")
    assert config_hash(api, ns, "front") == digest


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


def test_a_real_router_loads_the_class_live_and_the_status_shows_it(
    api: Api, operator: OperatorProcess, routers: FakeRouters, tmp_path: Path
) -> None:
    """Issue 9, acceptance 4 end to end: AgentProgram -> classes ConfigMap -> (the kubelet's part,
    played here: the mounted file is updated) -> a real router process reloads it with no restart ->
    its GET /v1/programs/classes -> the operator -> AgentProgram status."""
    import os
    import subprocess
    import sys
    import threading

    import httpx

    from shoal.operator.local_runtime import free_ports

    ns = "real-router"
    api.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"}, "stringData": {"alice": "sk-a"}}, ns)
    api.create(pool("chat"), ns)
    api.create(router("front", pools=[{"name": "chat"}], auth={"apiKeysSecret": {"name": "keys"}},
                      programs={"reloadIntervalS": 0.2}), ns)  # fmt: skip
    cm = wait_for(lambda: api.get(CONFIGMAPS, ns, "front-router"), what="router config")
    wait_for(lambda: api.get(CONFIGMAPS, ns, "front-router-classes"), what="classes ConfigMap")

    # The router.yaml the operator rendered, with this machine's paths and ports.
    port = next(free_ports())
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "alice").write_text("sk-a\n")
    config = yaml.safe_load(cm["data"]["router.yaml"])
    config["listen"] = {"host": "127.0.0.1", "port": port}
    config["pools"][0]["endpoints"] = {"static": ["http://127.0.0.1:9"]}
    config["auth"]["apiKeysFile"] = str(tmp_path / "keys")
    classes_file = tmp_path / "classes.yaml"
    config["programs"]["classesFile"] = str(classes_file)
    (tmp_path / "router.yaml").write_text(yaml.safe_dump(config))

    stop = threading.Event()

    def kubelet() -> None:  # ConfigMap -> mounted file, swapped atomically as the kubelet does
        while not stop.is_set():
            live = api.get(CONFIGMAPS, ns, "front-router-classes")
            text = live["data"]["classes.yaml"] if live else ""
            if not classes_file.exists() or classes_file.read_text() != text:
                (tmp_path / "classes.tmp").write_text(text)
                (tmp_path / "classes.tmp").replace(classes_file)
            stop.wait(0.1)

    sync = threading.Thread(target=kubelet, daemon=True)
    sync.start()
    wait_for(classes_file.exists, what="classes file")
    log = open(tmp_path / "router.log", "wb")  # noqa: SIM115 - closed below
    env = {**os.environ, "SHOAL_STATE_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "shoal.router", "--config", str(tmp_path / "router.yaml")],
                            stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), timeout=60, what=f"router up: {(tmp_path / 'router.log').read_text()[-2000:]}")
        with routers.lock:
            routers.real[(ns, "front")] = url

        api.create(program("agents", router="front", model="chat-model", priority=70), ns)
        wait_for(lambda: reason_of(api, AGENTPROGRAMS, ns, "agents", "Ready") == "Available", timeout=30,
                 what="Ready once the real router loaded the class")  # fmt: skip
        status = api.get(AGENTPROGRAMS, ns, "agents")["status"]
        assert (status["activePrograms"], status["queuedPrograms"], status["stepsPerMinute"]) == (0, 0, 0.0)
        listed = httpx.get(f"{url}/v1/programs/classes", headers={"Authorization": "Bearer sk-a"}).json()["data"]
        assert [(c["name"], c["priority"]) for c in listed] == [("agents", 70)]

        # Changed: the router reloads the new version; deleted: it drops it. Same process throughout.
        api.patch(AGENTPROGRAMS, ns, "agents", {"spec": {"priority": 10}})
        wait_for(lambda: [c["priority"] for c in _classes(url)] == [10], timeout=30, what="new version loaded")
        wait_for(lambda: reason_of(api, AGENTPROGRAMS, ns, "agents", "Ready") == "Available", what="Ready again")
        api.delete(AGENTPROGRAMS, ns, "agents")
        wait_for(lambda: _classes(url) == [], timeout=30, what="class dropped by the router")
        assert proc.poll() is None, "the router was restarted or died"
        assert api.get(DEPLOYMENTS, ns, "front-router")["metadata"]["generation"] == 1  # never rolled
    finally:
        stop.set()
        with routers.lock:
            routers.real.pop((ns, "front"), None)
        proc.terminate()
        proc.wait(15)
        log.close()


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2).status_code in (200, 503)
    except httpx.HTTPError:
        return False


def _classes(url: str) -> list[dict[str, Any]]:
    import httpx

    data: list[dict[str, Any]] = httpx.get(f"{url}/v1/programs/classes", headers={"Authorization": "Bearer sk-a"},
                                           timeout=5).json()["data"]  # fmt: skip
    return data


def test_counts_add_up_over_router_replicas(api: Api, operator: OperatorProcess, routers: FakeRouters) -> None:
    """Several router replicas: each owns some programs and loads the file itself, so the
    operator asks every ready replica (by pod IP), adds the counts, and waits for all of them."""
    ns = "replicas"
    api.create(pool("chat"), ns)
    api.create(router("front", pools=[{"name": "chat"}], replicas=2), ns)
    wait_for(lambda: api.get(DEPLOYMENTS, ns, "front-router"), what="router deployment")
    # The replicas' forwarding secret: created once, owned by the Router, kept across reconciles.
    secret = api.get(SECRETS, ns, "front-router-peers")
    assert secret is not None and secret["metadata"]["ownerReferences"][0]["kind"] == "Router"
    value = (secret.get("stringData") or secret.get("data"))["secret"]
    api.patch(ROUTERS, ns, "front", {"spec": {"logLevel": "debug"}})
    wait_for(lambda: api.get(ROUTERS, ns, "front")["status"].get("observedGeneration") == 2, what="reconciled")
    again = api.get(SECRETS, ns, "front-router-peers")
    assert (again.get("stringData") or again.get("data"))["secret"] == value
    labels = {"shoal.dev/router": "front", "app.kubernetes.io/component": "router"}
    for ip in ("10.9.0.1", "10.9.0.2"):
        api.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"front-router-{ip[-1]}", "labels": labels},
                    "spec": {"containers": [{"name": "router", "image": "r"}]},
                    "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}, ns)  # fmt: skip
    entry = {"name": "agents", "model": "chat-model", "priority": 50, "max_concurrent_programs": 8,
             "lease_seconds": 600.0, "tools": [], "active": 2, "paused": 0, "queued": 1, "steps_per_minute": 6.0}
    with routers.lock:
        routers.pods["10.9.0.1"] = {"object": "list", "data": [entry], "error": None}
        routers.pods["10.9.0.2"] = {"object": "list", "data": [], "error": None}
    api.create(program("agents", router="front", model="chat-model"), ns)

    def ready() -> dict[str, Any] | None:
        return condition(api.get(AGENTPROGRAMS, ns, "agents"), "Ready")

    wait_for(lambda: (c := ready()) and "loaded by 1 of 2 router replicas" in c["message"], what="one replica")
    with routers.lock:
        routers.pods["10.9.0.2"] = {"object": "list", "data": [{**entry, "active": 3, "queued": 0}], "error": None}
    wait_for(lambda: (c := ready()) and c["reason"] == "Available", what="loaded by both replicas")
    status = wait_for(lambda: (s := api.get(AGENTPROGRAMS, ns, "agents")["status"]).get("activePrograms") == 5 and s,
                      what="counts of both replicas")  # fmt: skip
    assert (status["queuedPrograms"], status["stepsPerMinute"]) == (1, 12.0)

    # The Router goes away: not Ready, and says why; it comes back with the class in its file.
    api.delete(ROUTERS, ns, "front")
    wait_for(lambda: (c := ready()) and "Router front not found" in c["message"] and c["status"] == "False",
             what="router gone")  # fmt: skip
    api.create(router("front", pools=[{"name": "chat"}], replicas=2), ns)
    wait_for(lambda: (c := ready()) and c["reason"] == "Available", what="router back")
    classes = yaml.safe_load(api.get(CONFIGMAPS, ns, "front-router-classes")["data"]["classes.yaml"])["classes"]
    assert [c["name"] for c in classes] == ["agents"]
