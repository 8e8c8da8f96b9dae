"""AgentProgram under the real operator and kmock: classes go live in the router config without a
rollout, a real router loads them, and the status counts come from the routers (issue 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.operator.builders.router import DISCOVERY_RULES, SANDBOX_RULES
from shoal.operator.kube import (
    AGENTPROGRAMS,
    CONFIGMAPS,
    DEPLOYMENTS,
    ROLES,
    ROUTERS,
    SECRETS,
)
from support.api import Api, OperatorProcess, condition, wait_for
from support.custom_resources import config_hash, pool, program, reason_of, router
from support.fake_router import FakeRouters

pytestmark = pytest.mark.integration


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
