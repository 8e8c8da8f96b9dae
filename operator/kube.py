"""A small async Kubernetes REST client (aiohttp) for the operator's own reads and writes.

kopf watches and patches the custom resources it handles; everything else (children,
status of related objects, events) goes through this client. Writes use server-side apply.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from shoal.crds import API_VERSION

FIELD_MANAGER = "shoal-operator"
_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class ResourceType:
    """Where a kind lives in the REST API."""

    api_version: str
    kind: str
    plural: str

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        root = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        parts = [root]
        if namespace is not None:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name is not None:
            parts.append(name)
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)


MODELPOOLS = ResourceType(API_VERSION, "ModelPool", "modelpools")
ROUTERS = ResourceType(API_VERSION, "Router", "routers")
AGENTPROGRAMS = ResourceType(API_VERSION, "AgentProgram", "agentprograms")
DEPLOYMENTS = ResourceType("apps/v1", "Deployment", "deployments")
SERVICES = ResourceType("v1", "Service", "services")
CONFIGMAPS = ResourceType("v1", "ConfigMap", "configmaps")
SECRETS = ResourceType("v1", "Secret", "secrets")
PODS = ResourceType("v1", "Pod", "pods")
EVENTS = ResourceType("v1", "Event", "events")
SERVICEACCOUNTS = ResourceType("v1", "ServiceAccount", "serviceaccounts")
PDBS = ResourceType("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
HPAS = ResourceType("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
SCALEDOBJECTS = ResourceType("keda.sh/v1alpha1", "ScaledObject", "scaledobjects")
ROLES = ResourceType("rbac.authorization.k8s.io/v1", "Role", "roles")
ROLEBINDINGS = ResourceType("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings")

KNOWN: dict[tuple[str, str], ResourceType] = {
    (r.api_version, r.kind): r
    for r in (MODELPOOLS, ROUTERS, AGENTPROGRAMS, DEPLOYMENTS, SERVICES, CONFIGMAPS, SECRETS, EVENTS,
              SERVICEACCOUNTS, PDBS, HPAS, SCALEDOBJECTS, ROLES, ROLEBINDINGS, PODS)
}  # fmt: skip


def resource_of(obj: dict[str, Any]) -> ResourceType:
    return KNOWN[(obj["apiVersion"], obj["kind"])]


class KubeError(Exception):
    """A Kubernetes API call failed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class KubeClient:
    """Async REST calls against one API server (aiohttp, which kopf brings along)."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | bool = True,
        token_file: Path | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = dict(headers or {})
        self._ssl = ssl_context
        self._token_file = token_file
        self._token_read = 0.0
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_environment(cls) -> KubeClient:
        """In-cluster service-account credentials when present, else the KUBECONFIG context."""
        if os.environ.get("KUBERNETES_SERVICE_HOST") and (_SA_DIR / "token").exists():
            host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            ca = ssl.create_default_context(cafile=str(_SA_DIR / "ca.crt"))
            return cls(f"https://{host}:{port}", ssl_context=ca, token_file=_SA_DIR / "token")
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(client_configuration=cfg)
        headers = {}
        if cfg.api_key.get("authorization"):
            headers["Authorization"] = cfg.api_key["authorization"]
        context: ssl.SSLContext | bool = False
        if cfg.verify_ssl:
            context = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else True
        if cfg.cert_file and cfg.key_file:
            if not isinstance(context, ssl.SSLContext):
                context = ssl.create_default_context()
                if not cfg.verify_ssl:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        return cls(cfg.host, headers=headers, ssl_context=context)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        content_type: str = "application/json",
    ) -> Response:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=64, ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
        # Bound service-account tokens rotate; re-read the projected file every minute.
        if self._token_file is not None and time.monotonic() - self._token_read > 60:
            self._headers["Authorization"] = f"Bearer {self._token_file.read_text().strip()}"
            self._token_read = time.monotonic()
        headers = dict(self._headers)
        data = None
        if json_body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(json_body)
        async with self._session.request(
            method, self._base_url + path, params=params, data=data, headers=headers
        ) as resp:
            return Response(resp.status, await resp.read())

    @staticmethod
    def _check(resp: Response) -> dict[str, Any]:
        if resp.status >= 400:
            try:
                message = resp.json().get("message", resp.body[:500])
            except ValueError:
                message = resp.body[:500].decode(errors="replace")
            raise KubeError(resp.status, str(message)[:500])
        data: dict[str, Any] = resp.json()
        return data

    async def get(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        resp = await self._request("GET", rt.path(namespace, name))
        if resp.status == 404:
            return None
        return self._check(resp)

    async def list(
        self, rt: ResourceType, namespace: str | None, labels: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """All objects of a type in a namespace (all namespaces with None), with these labels."""
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        resp = await self._request("GET", rt.path(namespace), params=params)
        if resp.status == 404:
            return []
        items: list[dict[str, Any]] = self._check(resp).get("items", [])
        # Filtered here too: minimal emulators (kmock) ignore selectors.
        wanted = (labels or {}).items()
        return [i for i in items if wanted <= ((i.get("metadata") or {}).get("labels") or {}).items()]

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply (force: the operator owns its children's fields)."""
        rt = resource_of(obj)
        ns, name = obj["metadata"].get("namespace"), obj["metadata"]["name"]
        resp = await self._request(
            "PATCH",
            rt.path(ns, name),
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            json_body=obj,
            content_type="application/apply-patch+yaml",
        )
        if resp.status == 404:
            # Real API servers create on apply; minimal emulators (kmock) need an explicit create.
            resp = await self._request("POST", rt.path(ns), json_body=obj)
        return self._check(resp)

    async def create(self, obj: dict[str, Any]) -> bool:
        """Create ``obj``; False when it already exists (its content is then left as it is)."""
        rt = resource_of(obj)
        resp = await self._request("POST", rt.path(obj["metadata"].get("namespace")), json_body=obj)
        if resp.status == 409:
            return False
        self._check(resp)
        return True

    async def delete(self, rt: ResourceType, namespace: str, name: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        resp = await self._request("DELETE", rt.path(namespace, name), params={"propagationPolicy": "Background"})
        if resp.status == 404:
            return False
        self._check(resp)
        return True

    async def patch_status(self, rt: ResourceType, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource (ignored when the object is gone)."""
        resp = await self._request(
            "PATCH",
            rt.path(namespace, name, "status"),
            json_body={"status": status},
            content_type="application/merge-patch+json",
        )
        if resp.status != 404:
            self._check(resp)

    async def patch_scale(self, rt: ResourceType, namespace: str, name: str, replicas: int) -> None:
        """Set ``spec.replicas`` through the scale subresource (as an autoscaler does)."""
        resp = await self._request(
            "PATCH",
            rt.path(namespace, name, "scale"),
            json_body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
        )
        self._check(resp)

    async def has_api(self, group_version: str) -> bool:
        """Whether the API server serves a group/version (e.g. keda.sh/v1alpha1)."""
        resp = await self._request("GET", f"/apis/{group_version}")
        return resp.status == 200

    async def event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Record a Kubernetes Event about ``involved`` (best effort: failures are swallowed)."""
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ns = meta.get("namespace") or "default"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": ns},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": ns,
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            await self._request("POST", EVENTS.path(ns), json_body=event)
