"""Names, labels, owner references and settings shared by every builder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from shoal.crds import API_VERSION

Manifest = dict[str, Any]

ENGINE_PORT = 8000
ROUTER_PORT = 8080
MANAGER = "shoal-operator"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_POOL = "shoal.dev/pool"
LABEL_ROUTER = "shoal.dev/router"
ANNOTATION_CONFIG_HASH = "shoal.dev/config-hash"
PRE_STOP_SECONDS = 5
"""Pause before SIGTERM: kube-proxy and the routers' pod watches drop a terminating pod's endpoint
in this time, so no new request is sent to a process that is about to stop listening."""


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns the children being built."""

    kind: str
    name: str
    namespace: str
    uid: str
    api_version: str = API_VERSION

    @classmethod
    def of(cls, body: Any) -> Owner:
        """From a resource body (a dict or kopf Body)."""
        meta = body["metadata"]
        return cls(
            kind=body["kind"],
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid", ""),
            api_version=body.get("apiVersion", API_VERSION),
        )


@dataclass(frozen=True)
class Images:
    """Container images the operator runs (the chart sets them from its values)."""

    engine: str = "ghcr.io/shoal-dev/shoal-engine:0.1.0"
    router: str = "ghcr.io/shoal-dev/shoal-router:0.1.0"
    pull_policy: str = "IfNotPresent"


def child_name(owner: Owner) -> str:
    """Name of every child of ``owner`` (suffixed so a Router and a ModelPool may share a name)."""
    suffix = {"ModelPool": "engine", "Router": "router"}[owner.kind]
    return f"{owner.name}-{suffix}"


def selector_labels(owner: Owner) -> dict[str, str]:
    """Labels that select the owner's pods (immutable once a Deployment exists)."""
    if owner.kind == "ModelPool":
        return {LABEL_POOL: owner.name, LABEL_COMPONENT: "engine"}
    return {LABEL_ROUTER: owner.name, LABEL_COMPONENT: "router"}


def labels(owner: Owner) -> dict[str, str]:
    """Labels of every child object and pod."""
    return {
        LABEL_NAME: f"shoal-{selector_labels(owner)[LABEL_COMPONENT]}",
        LABEL_INSTANCE: owner.name,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_PART_OF: "shoal",
        **selector_labels(owner),
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    """A controller reference: children are garbage-collected with their owner."""
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(owner: Owner, name: str | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name or child_name(owner),
        "namespace": owner.namespace,
        "labels": labels(owner),
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def config_hash(data: dict[str, str]) -> str:
    """Short, stable hash of a ConfigMap's data (a pod-template annotation: a change rolls the pods)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def quantity(value: float) -> str:
    """A Kubernetes quantity string for a non-negative number (4 -> "4", 0.5 -> "500m")."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def probe(path: str, *, period: int, failures: int, timeout: int = 2) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def pre_stop(seconds: int = PRE_STOP_SECONDS) -> dict[str, Any]:
    """A preStop pause (with the image's own python: no shell or sleep binary needed)."""
    return {"preStop": {"exec": {"command": ["python", "-c", f"import time; time.sleep({seconds})"]}}}


def container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


SHOAL_UID = 10001
"""The user of Shoal's images (docker/*.Dockerfile)."""


def pod_security() -> dict[str, Any]:
    # Shoal's images run as uid 10001 (1000 is the ubuntu user of ubuntu:24.04 and the CUDA bases).
    return {
        "runAsNonRoot": True,
        "runAsUser": SHOAL_UID,
        "runAsGroup": SHOAL_UID,
        "fsGroup": SHOAL_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
