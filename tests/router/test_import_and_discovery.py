"""Layering (no torch) and endpoint discovery (static, Kubernetes on a fake API)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from kubernetes import client as k8s

from shoal.router.config import KubernetesEndpoints
from shoal.router.discovery import StaticSource
from shoal.router.discovery.kubernetes import KubernetesSource, pod_urls, slice_urls


def test_import_router_does_not_import_torch() -> None:
    code = (
        "import sys, shoal.router, shoal.router.app, shoal.router.__main__, shoal.router.pool;"
        "bad = [m for m in ('torch', 'triton', 'transformers') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_static_source_yields_once() -> None:
    gen = StaticSource(["http://a:1/", "http://b:2"]).watch()
    assert await gen.__anext__() == frozenset({"http://a:1", "http://b:2"})
    await gen.aclose()


def pod(name: str, ip: str | None, ready: bool = True, phase: str = "Running", rv: str = "1") -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, resource_version=rv),
        status=k8s.V1PodStatus(
            phase=phase, pod_ip=ip, conditions=[k8s.V1PodCondition(type="Ready", status="True" if ready else "False")]
        ),
    )


def test_pod_and_slice_urls() -> None:
    cfg = KubernetesEndpoints(label_selector="app=x", port=8000)
    assert pod_urls(pod("a", "10.0.0.1"), cfg) == {"http://10.0.0.1:8000"}
    assert pod_urls(pod("a", "10.0.0.1", ready=False), cfg) == set()
    assert pod_urls(pod("a", None), cfg) == set()
    assert pod_urls(pod("a", "fd00::1"), cfg) == {"http://[fd00::1]:8000"}
    eps = k8s.V1EndpointSlice(
        address_type="IPv4",
        endpoints=[
            k8s.V1Endpoint(addresses=["10.0.0.2"], conditions=k8s.V1EndpointConditions(ready=True)),
            k8s.V1Endpoint(addresses=["10.0.0.3"], conditions=k8s.V1EndpointConditions(ready=False)),
        ],
        ports=[k8s.DiscoveryV1EndpointPort(name="http", port=9000)],
    )
    named = KubernetesEndpoints(label_selector="s", resource="endpointslices", port_name="http")
    assert slice_urls(eps, named) == {"http://10.0.0.2:9000"}
    assert slice_urls(eps, KubernetesEndpoints(label_selector="s", resource="endpointslices")) == {"http://10.0.0.2:8000"}


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def list_namespaced_pod(self, **kw: Any) -> k8s.V1PodList:
        self.calls.append(kw)
        return k8s.V1PodList(items=[pod("a", "10.0.0.1")], metadata=k8s.V1ListMeta(resource_version="5"))


class FakeWatch:
    rounds = 0

    def stream(self, fn: Any, **kw: Any) -> Any:
        FakeWatch.rounds += 1
        if FakeWatch.rounds == 1:
            assert kw["resource_version"] == "5" and kw["label_selector"] == "app=x"
            yield {"type": "ADDED", "object": pod("b", "10.0.0.2", rv="6")}
            yield {"type": "MODIFIED", "object": pod("a", "10.0.0.1", ready=False, rv="7")}
            yield {"type": "DELETED", "object": pod("b", "10.0.0.2", rv="8")}
        else:
            import time

            time.sleep(0.05)

    def stop(self) -> None:
        pass


async def test_kubernetes_source_lists_then_follows_the_watch() -> None:
    api = FakeApi()
    src = KubernetesSource(
        KubernetesEndpoints(namespace="ns", label_selector="app=x"), api_factory=lambda: api, watch_factory=FakeWatch
    )
    gen = src.watch()
    seen = [await asyncio.wait_for(gen.__anext__(), 5) for _ in range(4)]
    await gen.aclose()
    assert seen == [
        frozenset({"http://10.0.0.1:8000"}),
        frozenset({"http://10.0.0.1:8000", "http://10.0.0.2:8000"}),
        frozenset({"http://10.0.0.2:8000"}),
        frozenset(),
    ]
    assert api.calls[0] == {"namespace": "ns", "label_selector": "app=x"}
