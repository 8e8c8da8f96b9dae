"""Kubernetes discovery: watch a pool's ready Pods or EndpointSlices by label selector.

The official client is synchronous, so list+watch runs in a thread and hands snapshots
to the event loop. A watch that expires (410 Gone) or breaks is followed by a re-list.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from shoal.router.config import KubernetesEndpoints

log = logging.getLogger("shoal.router.discovery")

ApiFactory = Callable[[], Any]
"""Returns an API object with ``list_namespaced_pod`` or ``list_namespaced_endpoint_slice``."""
WatchFactory = Callable[[], Any]
"""Returns an object like ``kubernetes.watch.Watch`` (``stream(fn, **kw)`` and ``stop()``)."""


def _load_client_config() -> None:
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def _default_api(resource: str) -> ApiFactory:
    def factory() -> Any:
        from kubernetes import client

        _load_client_config()
        return client.CoreV1Api() if resource == "pods" else client.DiscoveryV1Api()

    return factory


def _default_watch() -> Any:
    from kubernetes import watch

    return watch.Watch()


def _get(obj: Any, *path: str) -> Any:
    """Attribute access that also works on plain dicts (and tolerates missing fields)."""
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return obj


def pod_urls(pod: Any, cfg: KubernetesEndpoints) -> set[str]:
    """The URL of a pod that is Running, Ready, has an IP and is not terminating."""
    if _get(pod, "metadata", "deletion_timestamp") is not None:
        return set()
    if _get(pod, "status", "phase") != "Running":
        return set()
    ip = _get(pod, "status", "pod_ip")
    ready = any(
        _get(c, "type") == "Ready" and _get(c, "status") == "True" for c in _get(pod, "status", "conditions") or []
    )
    return {f"{cfg.scheme}://{_host(ip)}:{cfg.port}"} if ip and ready else set()


def slice_urls(eps: Any, cfg: KubernetesEndpoints) -> set[str]:
    """URLs of the ready addresses of one EndpointSlice."""
    port = cfg.port
    if cfg.port_name is not None:
        named = [p for p in _get(eps, "ports") or [] if _get(p, "name") == cfg.port_name]
        if not named or _get(named[0], "port") is None:
            return set()
        port = int(_get(named[0], "port"))
    urls: set[str] = set()
    for ep in _get(eps, "endpoints") or []:
        ready = _get(ep, "conditions", "ready")
        terminating = _get(ep, "conditions", "terminating")
        if ready is False or terminating is True:
            continue
        for address in _get(ep, "addresses") or []:
            urls.add(f"{cfg.scheme}://{_host(address)}:{port}")
    return urls


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


class KubernetesSource:
    """Snapshots of the ready replicas matching ``cfg.label_selector`` in ``cfg.namespace``."""

    def __init__(
        self,
        cfg: KubernetesEndpoints,
        api_factory: ApiFactory | None = None,
        watch_factory: WatchFactory | None = None,
        watch_timeout_s: int = 60,
        retry_s: float = 2.0,
    ) -> None:
        self._cfg = cfg
        self._api_factory = api_factory or _default_api(cfg.resource)
        self._watch_factory = watch_factory or _default_watch
        self._watch_timeout_s = watch_timeout_s
        self._retry_s = retry_s
        self._urls_of = pod_urls if cfg.resource == "pods" else slice_urls

    def _list_fn(self, api: Any) -> Callable[..., Any]:
        return api.list_namespaced_pod if self._cfg.resource == "pods" else api.list_namespaced_endpoint_slice

    async def watch(self) -> AsyncIterator[frozenset[str]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[frozenset[str]] = asyncio.Queue()
        stop = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(loop, queue, stop), name=f"k8s-discovery-{self._cfg.label_selector}", daemon=True
        )
        thread.start()
        try:
            last: frozenset[str] | None = None
            while True:
                snapshot = await queue.get()
                if snapshot != last:
                    last = snapshot
                    yield snapshot
        finally:
            stop.set()

    def _run(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[frozenset[str]], stop: threading.Event) -> None:
        api = None
        while not stop.is_set():
            try:
                if api is None:
                    api = self._api_factory()
                self._list_and_watch(api, loop, queue, stop)
            except Exception as exc:  # network, auth, 410 Gone: re-list after a pause
                log.warning("kubernetes discovery for %r: %s; re-listing", self._cfg.label_selector, exc)
                stop.wait(self._retry_s)

    def _list_and_watch(
        self, api: Any, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[frozenset[str]], stop: threading.Event
    ) -> None:
        list_fn = self._list_fn(api)
        kwargs = {"namespace": self._cfg.namespace, "label_selector": self._cfg.label_selector}
        listing = list_fn(**kwargs)
        members: dict[str, set[str]] = {}
        for obj in _get(listing, "items") or []:
            members[_get(obj, "metadata", "name")] = self._urls_of(obj, self._cfg)
        version = _get(listing, "metadata", "resource_version")

        def publish() -> None:
            snapshot = frozenset(url for urls in members.values() for url in urls)
            loop.call_soon_threadsafe(queue.put_nowait, snapshot)

        publish()
        while not stop.is_set():
            watcher = self._watch_factory()
            for event in watcher.stream(
                list_fn, resource_version=version, timeout_seconds=self._watch_timeout_s, **kwargs
            ):
                if stop.is_set():
                    watcher.stop()
                    return
                kind, obj = event.get("type"), event.get("object")
                if kind == "ERROR":
                    raise RuntimeError(f"watch error: {_get(obj, 'message') or obj}")
                name = _get(obj, "metadata", "name")
                version = _get(obj, "metadata", "resource_version") or version
                if kind == "DELETED":
                    members.pop(name, None)
                else:
                    members[name] = self._urls_of(obj, self._cfg)
                publish()
