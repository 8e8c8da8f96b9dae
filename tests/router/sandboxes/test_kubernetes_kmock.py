"""Acceptance 3: the Kubernetes backend against the kmock API emulator.

kmock has no kubelet and no exec: the test plays the kubelet (pods turn Running when the
backend polls) and replaces the exec stream with a fake that runs the wrapped command here
(only the tool wrapper; the in-pod sweep ``kill -9 -1`` is recorded, never run here).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from _kube_fakes import NS, FakeExec, image_class
from _sandbox_helpers import FakeClock

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.backend import SandboxError
from shoal.router.sandboxes.kubernetes import _SWEEP, RBAC_RULES, KubernetesBackend
from shoal.router.sandboxes.manager import SandboxManager
from shoal.router.sandboxes.settings import SandboxSettings
from support.kmock_cluster import KmockCluster

REPO = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.integration


class Recorder:
    """Wraps a client API object and records the names of the methods called on it."""

    def __init__(self, api: Any, calls: list[str]) -> None:
        self._api, self._calls = api, calls

    def __getattr__(self, name: str) -> Any:
        self._calls.append(name)
        return getattr(self._api, name)


class Kubelet:
    """Turns Pending sandbox pods Running (kmock has no kubelet)."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def __call__(self, _seconds: float) -> None:
        for pod in self.core.list_namespaced_pod(NS).items:
            if (pod.status and pod.status.phase) != "Running":
                self.core.patch_namespaced_pod_status(pod.metadata.name, NS, {"status": {"phase": "Running"}})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmockCluster]:
    with KmockCluster(tmp_path_factory.mktemp("kmock")) as k:
        assert k.emulator is not None
        k.emulator.resources["networking.k8s.io/v1/networkpolicies"] = kmock.ResourceInfo(
            kind="NetworkPolicy", namespaced=True, verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources=set(),
        )  # fmt: skip
        yield k


@pytest.fixture
def apis(cluster: KmockCluster) -> Iterator[tuple[Any, Any, list[str]]]:
    from kubernetes import client

    config = client.Configuration()
    config.host = cluster.url
    api_client = client.ApiClient(config)
    calls: list[str] = []
    yield Recorder(client.CoreV1Api(api_client), calls), Recorder(client.NetworkingV1Api(api_client), calls), calls
    core = client.CoreV1Api(api_client)
    for pod in core.list_namespaced_pod(NS).items:  # each test starts from an empty namespace
        core.delete_namespaced_pod(pod.metadata.name, NS)
    net = client.NetworkingV1Api(api_client)
    for policy in net.list_namespaced_network_policy(NS).items:
        net.delete_namespaced_network_policy(policy.metadata.name, NS)
    api_client.close()


def backend(apis: tuple[Any, Any, list[str]], tmp_path: Path, router_id: str = "r1") -> tuple[KubernetesBackend, FakeExec]:
    core, net, _ = apis
    fake = FakeExec(tmp_path)
    settings = SandboxSettings(backend="kubernetes", namespace=NS, router_id=router_id, pod_start_poll_s=0.01)
    return KubernetesBackend(settings, apis=lambda: (core, net), stream_fn=fake, sleep=Kubelet(core._api)), fake


def objects(apis: tuple[Any, Any, list[str]]) -> tuple[list[Any], list[Any]]:
    core, net, _ = apis
    return core.list_namespaced_pod(NS).items, net.list_namespaced_network_policy(NS).items


async def test_pod_and_policy_created_used_and_deleted_on_release(apis: tuple[Any, Any, list[str]], tmp_path: Path) -> None:
    kb, fake = backend(apis, tmp_path)
    m = SandboxManager(kb, kb.settings, clock=FakeClock())
    cls = image_class()
    result = await m.run_tool("prog-1", cls, "echo", b'{"q": 1}')
    assert result.stdout == '{"q": 1}' and result.exit_code == 0 and not result.timed_out
    pods, policies = objects(apis)
    assert [p.metadata.name for p in pods] == [p.metadata.name for p in policies]
    pod = pods[0]
    assert pod.metadata.labels["shoal.dev/program"] == "prog-1" and pod.metadata.labels["shoal.dev/sandbox"] == "true"
    assert pod.metadata.labels["shoal.dev/program-class"] == "coder"
    assert pod.metadata.owner_references[0].uid == "uid-1" and pod.metadata.owner_references[0].kind == "AgentProgram"
    container = pod.spec.containers[0]
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.capabilities.drop == ["ALL"]
    assert pod.spec.automount_service_account_token is False
    assert policies[0].spec.policy_types == ["Ingress", "Egress"] and not policies[0].spec.egress
    # The call ran through exec with the class's limits, then the pod was swept.
    (name, command), (sweep_name, sweep) = fake.commands[0], fake.commands[1]
    assert name == pod.metadata.name and "ulimit -t 5" in command[2] and command[-1] == "cat"
    assert (sweep_name, sweep) == (name, _SWEEP)
    ledger = await m.ledger("prog-1")
    assert ledger is not None and ledger["sandboxes"] == 1 and ledger["processes"] == 1 and ledger["disk_bytes"] == 12 * 1024

    hang = await m.run_tool("prog-1", cls, "hang", b"{}")
    assert hang.timed_out and hang.exit_code == -9 and hang.duration_s < 4
    assert [c[1] == _SWEEP for c in fake.commands[-2:]] == [False, True]  # the call, then the sweep

    apis[1].delete_namespaced_network_policy(pod.metadata.name, NS)  # someone removes the deny-all policy
    with pytest.raises(SandboxError, match=r"NetworkPolicy .* is gone"):
        await m.run_tool("prog-1", cls, "echo", b"{}")

    assert await m.release("prog-1")
    assert objects(apis) == ([], [])


async def test_warm_pod_is_relabelled_for_its_program(apis: tuple[Any, Any, list[str]], tmp_path: Path) -> None:
    kb, _ = backend(apis, tmp_path)
    m = SandboxManager(kb, kb.settings, clock=FakeClock())
    cls = ProgramClassConfig.model_validate({**image_class().model_dump(by_alias=True),
                                             "sandbox": {"image": "busybox", "warmPoolSize": 1}})  # fmt: skip
    m.set_classes([cls])
    while m.states()["warm"] < 1:
        await __import__("asyncio").sleep(0.02)
    (warm,) = objects(apis)[0]
    assert warm.metadata.labels["shoal.dev/program"] == ""
    await m.acquire("prog-9", cls)
    pod = apis[0].read_namespaced_pod(warm.metadata.name, NS)
    assert pod.metadata.labels["shoal.dev/program"] == "prog-9"
    assert pod.metadata.annotations["shoal.dev/program-id"] == "prog-9"
    await m.stop()
    assert objects(apis) == ([], [])


async def test_orphans_removed_after_restart_only_this_routers(apis: tuple[Any, Any, list[str]], tmp_path: Path) -> None:
    kb, _ = backend(apis, tmp_path)
    other, _ = backend(apis, tmp_path, router_id="r2")
    crashed = SandboxManager(kb, kb.settings, clock=FakeClock())
    cls = image_class(owner_uid=None)  # kmock's GC would take objects whose owner does not exist
    for i in range(3):
        await crashed.acquire(f"p{i}", cls)
    kept = SandboxManager(other, other.settings, clock=FakeClock())
    await kept.acquire("theirs", cls)
    assert len(objects(apis)[0]) == 4
    restarted_backend, _ = backend(apis, tmp_path)
    restarted = SandboxManager(restarted_backend, restarted_backend.settings)
    assert await restarted.recover() == 3
    pods, policies = objects(apis)
    assert [p.metadata.labels["shoal.dev/router"] for p in pods + policies] == ["r2", "r2"]
    await kept.release("theirs")


async def test_deleting_the_agentprogram_collects_its_sandboxes(
    apis: tuple[Any, Any, list[str]], tmp_path: Path, cluster: KmockCluster
) -> None:
    from kubernetes import client

    kb, _ = backend(apis, tmp_path)
    custom = client.CustomObjectsApi(apis[0]._api.api_client)
    custom.create_namespaced_custom_object("shoal.dev", "v1alpha1", NS, "agentprograms", {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "AgentProgram", "metadata": {"name": "coder"}, "spec": {}})  # fmt: skip
    owner = custom.get_namespaced_custom_object("shoal.dev", "v1alpha1", NS, "agentprograms", "coder")
    m = SandboxManager(kb, kb.settings, clock=FakeClock())
    await m.acquire("p1", image_class(owner_uid=owner["metadata"]["uid"]))
    assert len(objects(apis)[0]) == 1
    custom.delete_namespaced_custom_object("shoal.dev", "v1alpha1", NS, "agentprograms", "coder")
    assert objects(apis) == ([], [])  # kmock's garbage collector follows ownerReferences


async def test_role_covers_exactly_the_calls_made(apis: tuple[Any, Any, list[str]], tmp_path: Path) -> None:
    kb, _ = backend(apis, tmp_path)
    m = SandboxManager(kb, kb.settings, clock=FakeClock())
    cls = image_class(owner_uid=None)
    m.set_classes([ProgramClassConfig.model_validate({**cls.model_dump(by_alias=True), "name": "warm",
                                                      "sandbox": {"image": "busybox", "warmPoolSize": 1}})])  # fmt: skip
    await m.run_tool("p1", cls, "echo", b"{}")
    await m.ledger("p1")
    await m.acquire("p2", m.warm.classes["warm"])
    await m.recover()
    await m.stop()
    used: set[tuple[str, str, str]] = set()
    for method in apis[2]:
        match = re.fullmatch(r"(connect_get|create|read|list|patch|delete)_namespaced_(pod|network_policy)(_exec|_status)?", method)
        assert match, f"unexpected API call {method}"
        verb, kind, sub = match.groups()
        group, resource = ("", "pods") if kind == "pod" else ("networking.k8s.io", "networkpolicies")
        if sub == "_exec":
            used |= {(group, "pods/exec", "create"), (group, "pods/exec", "get")}  # a websocket GET or POST
        else:
            used.add((group, resource + (sub or "").replace("_", "/"), {"read": "get"}.get(verb, verb)))
    granted = {(g, r, v) for g, r, verbs in RBAC_RULES for v in verbs}
    assert used == granted
    block = re.search(r"```yaml\n(.*?)```", (REPO / "router" / "sandboxes" / "RBAC.md").read_text(), re.S)
    assert block is not None
    documented = {(g, r, v) for rule in yaml.safe_load(block.group(1))["rules"]
                  for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip
    assert documented == granted


async def test_a_replaced_replicas_sandboxes_are_removed_by_its_group(
    apis: tuple[Any, Any, list[str]], tmp_path: Path
) -> None:
    core = apis[0]._api

    def replica(router_id: str, group: str | None = "front") -> SandboxManager:
        settings = SandboxSettings(backend="kubernetes", namespace=NS, router_id=router_id, router_group=group,
                                   pod_start_poll_s=0.01)  # fmt: skip
        kb = KubernetesBackend(settings, apis=lambda: (apis[0], apis[1]), stream_fn=FakeExec(tmp_path),
                               sleep=Kubelet(core))  # fmt: skip
        return SandboxManager(kb, settings, clock=FakeClock())

    cls = image_class(owner_uid=None)
    core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "front-a"},
                                    "spec": {"containers": [{"name": "r", "image": "router"}]}})  # fmt: skip
    await replica("front-a").acquire("a1", cls)  # a live replica (its pod exists)
    await replica("front-b").acquire("b1", cls)  # a replica whose pod is gone
    await replica("zzz", group="other").acquire("z1", cls)  # another Router's replica
    assert await replica("front-c").recover() == 1
    pods = [p for p in objects(apis)[0] if (p.metadata.labels or {}).get("shoal.dev/sandbox") == "true"]
    assert sorted(p.metadata.labels["shoal.dev/router"] for p in pods) == ["front-a", "zzz"]
    assert pods[0].metadata.labels["shoal.dev/router-group"] in ("front", "other")
