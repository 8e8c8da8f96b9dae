"""A kmock-based Kubernetes API emulator good enough for a real ``kopf run`` (tests and benches).

kmock 0.8 needs these additions for an operator: ``GET /api/v1/namespaces`` is routed (with a
seeded ``default`` namespace); stored objects get ``uid``, ``resourceVersion``,
``creationTimestamp`` and ``generation`` (bumped on spec changes, as a real API server does; no-op patches change nothing); and
deleting an object deletes its dependents by ``ownerReferences`` (the garbage collector); a
failed JSON-patch ``test`` is a 422; and ``reject()`` makes the API refuse writes of one object
with a 422 (as its validation would, e.g. for a bad quantity), for error-path tests.

Server-side apply (``PATCH`` with ``application/apply-patch+yaml``), minimal but honest: it
creates a missing object; it merges the applied fields (dicts key by key, lists replaced whole);
it records the applied field set for the ``fieldManager`` in ``metadata.managedFields``
(``operation: Apply``, FieldsV1) and removes the fields that manager applied before and no longer
applies; an apply that changes nothing neither bumps ``resourceVersion`` nor emits a watch event.
Not emulated: lists merged by key (a real server keeps a container another manager added),
ownership taken by non-apply writers (a field someone else changed since is still removed when the
applier drops it), conflicts (every apply acts as ``force=true``) and dry runs.

Watches stream every change to every kind (children included). There are still no controllers
(Deployments never get pods), no label selectors and no schema checks.

``python -m support.kmock_cluster --kubeconfig PATH`` serves one until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
from kmock._internal import dicts, enums, rendering

_ALL_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}

BUILTIN: dict[str, tuple[str, bool, set[str]]] = {
    # resource -> (kind, namespaced, subresources)
    "v1/namespaces": ("Namespace", False, set()),
    "v1/events": ("Event", True, set()),
    "v1/services": ("Service", True, set()),
    "v1/configmaps": ("ConfigMap", True, set()),
    "v1/secrets": ("Secret", True, set()),
    "v1/serviceaccounts": ("ServiceAccount", True, set()),
    "v1/pods": ("Pod", True, {"status"}),
    "apps/v1/deployments": ("Deployment", True, {"status", "scale"}),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", True, {"status"}),
    "autoscaling/v2/horizontalpodautoscalers": ("HorizontalPodAutoscaler", True, {"status"}),
    "rbac.authorization.k8s.io/v1/roles": ("Role", True, set()),
    "rbac.authorization.k8s.io/v1/rolebindings": ("RoleBinding", True, set()),
    "events.k8s.io/v1/events": ("Event", True, set()),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False, {"status"}),
    "shoal.dev/v1alpha1/modelpools": ("ModelPool", True, {"status", "scale"}),
    "shoal.dev/v1alpha1/routers": ("Router", True, {"status"}),
    "shoal.dev/v1alpha1/agentprograms": ("AgentProgram", True, {"status"}),
}
KEDA = {"keda.sh/v1alpha1/scaledobjects": ("ScaledObject", True, {"status"})}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ShoalEmulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator plus the additions an operator needs (see the module docstring)."""

    def __init__(self, *, keda: bool = False) -> None:
        super().__init__()
        self._versions = itertools.count(1)
        self._namespaces = ["default"]
        self.rejections: dict[tuple[str, str, str], str] = {}
        """(plural, namespace, name) -> why writes of that object are refused with a 422."""
        self._deleted_uids: set[str] = set()
        for key, (kind, namespaced, subresources) in {**BUILTIN, **(KEDA if keda else {})}.items():
            self.resources[key] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, verbs=_ALL_VERBS, subresources=subresources
            )

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock cannot parse the namespace list URL (it reads "namespaces" as a namespace prefix).
        if raw_request.method == "GET" and raw_request.path.rstrip("/") == "/api/v1/namespaces":
            if raw_request.query.get("watch") == "true":
                return await self._idle_watch(raw_request)
            items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in self._namespaces]
            return aiohttp.web.json_response({"kind": "NamespaceList", "metadata": {"resourceVersion": "1"}, "items": items})
        try:
            return await super().__call__(raw_request)
        finally:
            # kmock matches every request against its whole request log (O(log) per request). Nothing
            # here asserts on that log, so keep only requests in flight (watch streams) in it.
            self._requests[:] = [r for r in self._requests if r._raw_request is not raw_request]

    async def _idle_watch(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw_request)
        await asyncio.sleep(float(raw_request.query.get("timeoutSeconds", "300")))
        return response

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        self._check_rejection(request)
        if request.resource is not None and request.action == enums.action.UPDATE and isinstance(request.data, dict):
            current = self._current(request)
            apply = "apply-patch" in request.headers.get("Content-Type", "")
            if current is None and apply:
                created = await self._apply_create(request)
                await self._collect_garbage(deleted_owners_only=True)  # created for an owner already gone
                return created
            unchanged = current is not None and dicts.patch_dict(current, request.data) == current
            if apply and current is not None:
                unchanged = self._prepare_apply(request, current)
            if unchanged:
                # A real API server neither bumps resourceVersion nor emits an event for a no-op patch.
                return aiohttp.web.json_response(current)
        if request.resource is not None:
            self._stamp(request)
        before = self._current(request)
        try:
            response = await super()._handle(request)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as exc:
            # A failed "test" op (kopf's optimistic-concurrency check) is a 422, as on a real API server.
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
        # A removal orphans dependents (a DELETE, or a patch that dropped the last finalizer); a write
        # naming an owner that was deleted makes an orphan too (a reconcile racing a deletion): the
        # real collector deletes both. (Owners the test never created are not judged on writes.)
        if before is not None and self._current(request) is None:
            self._deleted_uids.add(before.get("metadata", {}).get("uid"))
        if request.action == enums.action.DELETE or (
            request.action == enums.action.UPDATE and request.name is not None and self._current(request) is None
        ):
            await self._collect_garbage()
        elif isinstance(request.data, dict) and (request.data.get("metadata") or {}).get("ownerReferences"):
            await self._collect_garbage(deleted_owners_only=True)
        return response

    def _check_rejection(self, request: rendering.Request) -> None:
        if request.resource is None or request.subresource is not None or not isinstance(request.data, dict):
            return
        if request.action not in (enums.action.CREATE, enums.action.UPDATE):
            return
        meta = request.data.get("metadata") or {}
        namespace = request.namespace or meta.get("namespace") or ""
        name = request.name or meta.get("name") or ""
        why = self.rejections.get((str(request.resource.plural), namespace, name))
        if why is not None:
            kind = self.resources[_resource_key(request.resource)].kind
            group = f".{request.resource.group}" if request.resource.group else ""
            raise kmock.KubernetesError(status=422, reason="Invalid", message=f'{kind}{group} "{name}" is invalid: {why}')

    def _prepare_apply(self, request: rendering.Request, current: dict[str, Any]) -> bool:
        """Turn an apply into the merge patch it amounts to; True when it would change nothing."""
        manager = request.params.get("fieldManager", "")
        data: dict[str, Any] = request.data
        entries = [e for e in (current.get("metadata") or {}).get("managedFields") or [] if isinstance(e, dict)]
        before = next((e for e in entries if e.get("manager") == manager and e.get("operation") == "Apply"), None)
        old_fields = _decode_fields((before or {}).get("fieldsV1") or {})
        new_fields = _applied_fields(data)
        for path in sorted(old_fields - new_fields):
            _set_none(data, path)
        if dicts.patch_dict(current, data) == current and old_fields == new_fields:
            return True
        entry = _managed_entry(manager, data, new_fields)
        data.setdefault("metadata", {})["managedFields"] = [e for e in entries if e is not before] + [entry]
        return False

    async def _apply_create(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Server-side apply of a missing object creates it (as a real API server does)."""
        assert request.resource is not None and request.name is not None
        data = dict(request.data)
        meta = data.setdefault("metadata", {})
        meta.setdefault("namespace", request.namespace)
        meta["managedFields"] = [_managed_entry(request.params.get("fieldManager", ""), data, _applied_fields(data))]
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._versions)), creationTimestamp=_now(),
                    generation=1)  # fmt: skip
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key in self.objects:
                self.objects[key].create(data)
            else:
                self.objects[key] = data
            raw = self.objects[key].raw
            await self._buses[request.resource].put({"type": "ADDED", "object": raw})
        return aiohttp.web.json_response(raw, status=201)

    def _stamp(self, request: rendering.Request) -> None:
        data = request.data
        version = str(next(self._versions))
        if request.action == enums.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
            meta.update(uid=str(uuid.uuid4()), resourceVersion=version, creationTimestamp=_now(), generation=1)
        elif request.action == enums.action.UPDATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = version
            current = self._current(request)
            if current is not None:
                for key in ("uid", "creationTimestamp", "generation"):
                    meta.pop(key, None)  # server-owned: a client cannot overwrite them
                if request.subresource is None and "spec" in data:
                    merged = dicts.patch_dict(current, data)
                    if merged.get("spec") != current.get("spec"):
                        meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1
        elif request.action == enums.action.UPDATE and isinstance(data, list):
            data.append({"op": "replace", "path": "/metadata/resourceVersion", "value": version})

    def _current(self, request: rendering.Request) -> dict[str, Any] | None:
        if request.resource is None or request.name is None:
            return None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        raw: dict[str, Any] = self.objects[key].raw
        return raw

    async def _collect_garbage(self, *, deleted_owners_only: bool = False) -> None:
        """Delete objects whose controller owner no longer exists (cascading); with
        ``deleted_owners_only``, only those whose owner existed here and was deleted."""
        while True:
            async with self._lock:
                alive = {
                    obj.raw.get("metadata", {}).get("uid") for _, obj in self.objects.items() if not obj.deleted
                }
                gone = (self._deleted_uids - alive) if deleted_owners_only else None
                orphans = [
                    (key, obj)
                    for key, obj in self.objects.items()
                    if not obj.deleted
                    and any(
                        (ref.get("uid") in gone) if gone is not None else (ref.get("uid") not in alive)
                        for ref in obj.raw.get("metadata", {}).get("ownerReferences", [])
                    )
                ]
                for (resource, _, _), obj in orphans:
                    raw = obj.raw
                    self._deleted_uids.add(raw.get("metadata", {}).get("uid"))
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})
            if not orphans:
                return


def _resource_key(resource: Any) -> str:
    return "/".join(p for p in (resource.group, resource.version, resource.plural) if p)


_UNTRACKED = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace"), ("metadata", "managedFields")}


def _applied_fields(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Leaf paths of an applied object (a list is one leaf: no merge keys are emulated)."""
    out: set[tuple[str, ...]] = set()
    for key, value in obj.items():
        path = (*prefix, key)
        if path in _UNTRACKED:
            continue
        if isinstance(value, dict) and value:
            out |= _applied_fields(value, path)
        else:
            out.add(path)
    return out


def _encode_fields(paths: set[tuple[str, ...]]) -> dict[str, Any]:
    """FieldsV1 as a real API server writes it: {"f:spec": {"f:replicas": {}}}."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return root


def _decode_fields(fields: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for key, value in fields.items():
        if not key.startswith("f:"):
            continue
        path = (*prefix, key[2:])
        out |= _decode_fields(value, path) if value else {path}
    return out


def _set_none(data: dict[str, Any], path: tuple[str, ...]) -> None:
    """Mark ``path`` for removal in a merge patch (unless the patch sets a parent as a whole)."""
    node = data
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            return
        node = child
    node.setdefault(path[-1], None)


def _managed_entry(manager: str, data: dict[str, Any], fields: set[tuple[str, ...]]) -> dict[str, Any]:
    return {"manager": manager, "operation": "Apply", "apiVersion": data.get("apiVersion"), "time": _now(),
            "fieldsType": "FieldsV1", "fieldsV1": _encode_fields(fields)}  # fmt: skip


class KmockCluster:
    """A ShoalEmulator on 127.0.0.1 served from a background thread, with a kubeconfig for clients.

    Use as a context manager; ``url`` and ``kubeconfig`` are valid inside it.
    """

    def __init__(self, state_dir: Path, *, keda: bool = False, port: int = 0) -> None:
        self.kubeconfig = Path(state_dir) / "kubeconfig.yaml"
        self._keda = keda
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self.url = ""
        self.emulator: ShoalEmulator | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.emulator = ShoalEmulator(keda=self._keda)
        async with self.emulator, kmock.Server(self.emulator, port=self._port or None) as server:
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> KmockCluster:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("kmock did not start")
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.write_text(kubeconfig_text(self.url))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def reject(self, plural: str, namespace: str, name: str, why: str) -> None:
        """From now on, creating or changing that object fails with 422 Invalid: ``why``."""
        assert self.emulator is not None
        self.emulator.rejections[(plural, namespace, name)] = why

    def accept(self, plural: str, namespace: str, name: str) -> None:
        """Undo ``reject``."""
        assert self.emulator is not None
        self.emulator.rejections.pop((plural, namespace, name), None)


def kubeconfig_text(url: str) -> str:
    """A kubeconfig (JSON is valid YAML) pointing at an unauthenticated API server."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": url}}],
            "users": [{"name": "kmock", "user": {"token": "kmock"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}],
            "current-context": "kmock",
        },
        indent=2,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.kmock_cluster", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True, help="where to write the kubeconfig")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--keda", action="store_true", help="also serve keda.sh/v1alpha1 ScaledObjects")
    args = parser.parse_args(argv)
    cluster = KmockCluster(args.kubeconfig.parent, keda=args.keda, port=args.port)
    cluster.kubeconfig = args.kubeconfig
    with cluster:
        print(f"kmock API server at {cluster.url}; KUBECONFIG={args.kubeconfig}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
