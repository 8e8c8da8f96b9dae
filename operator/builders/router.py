"""Router -> ConfigMaps (config, live program classes), Deployment (rolled on config change),
Service, and RBAC (pod discovery; sandbox pods when an AgentProgram runs image sandboxes)."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from shoal.crds import RouterSpec
from shoal.operator.builders.common import (
    ANNOTATION_CONFIG_HASH,
    PRE_STOP_SECONDS,
    ROUTER_PORT,
    Images,
    Manifest,
    Owner,
    child_name,
    config_hash,
    container_security,
    metadata,
    pod_security,
    pre_stop,
    probe,
    selector_labels,
)
from shoal.operator.builders.router_config import (
    API_KEYS_DIR,
    CLASSES_DIR,
    PEER_SECRET_ENV,
    UPSTREAM_KEY_ENV,
    RenderedConfig,
)
from shoal.router.sandboxes.kubernetes import RBAC_RULES

CONFIG_DIR = "/etc/shoal/router"
PEER_SECRET_KEY = "secret"
STATE_DIR = "/var/lib/shoal"
"""The router's writable directory (an emptyDir; the root filesystem is read-only)."""
MAX_ROUTER_ID = 40
"""Longest sandbox router id the router accepts (``sandboxes.routerId``)."""
POD_NAME_SUFFIX = 17
"""What a Deployment adds to its name for a pod's name: ``-<template hash, <= 10>-<5>``."""
SHUTDOWN_SECONDS = 30
"""Time a terminating router gets to finish the requests it is proxying (after the preStop pause)."""


def sandbox_router_id(name: str) -> str:
    """A stable sandbox router id for a one-replica Router (its name, shortened with a hash)."""
    if len(name) <= MAX_ROUTER_ID:
        return name
    return f"{name[: MAX_ROUTER_ID - 9].rstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def sandbox_problem(owner: Owner, spec: RouterSpec, rendered: RenderedConfig) -> str | None:
    """Why this Router cannot run its sandbox pods, or None.

    With several replicas each names its sandboxes after its own pod (a replica removes the
    sandboxes of its id it does not hold when it starts), so pod names must fit the id.
    """
    if rendered.image_sandboxes and spec.replicas > 1 and not _pod_named_ids(owner, spec):
        short = MAX_ROUTER_ID - POD_NAME_SUFFIX - len("-router")
        return (
            f"image sandboxes with several router replicas need a Router name of at most {short} characters "
            f"(sandboxes are named after the router pods)"
        )
    return None


def _pod_named_ids(owner: Owner, spec: RouterSpec) -> bool:
    """Replicas name their sandboxes after their pods (several replicas, and the names fit)."""
    return spec.replicas > 1 and len(child_name(owner)) + POD_NAME_SUFFIX <= MAX_ROUTER_ID


def _sandbox_env(owner: Owner, spec: RouterSpec) -> list[dict[str, Any]]:
    # Always the kubernetes backend, whatever the classes: the pod template must not depend on
    # the AgentPrograms (no rollout); only the Role's sandbox rights follow them, live.
    settings = {"backend": "kubernetes", "namespace": owner.namespace}
    env: list[dict[str, Any]] = [
        {"name": "SHOAL_STATE_DIR", "value": STATE_DIR},
        {"name": "SHOAL_SANDBOXES", "value": json.dumps(settings)},
    ]
    if _pod_named_ids(owner, spec):
        env.append({"name": "SHOAL_ROUTER_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    else:
        env.append({"name": "SHOAL_ROUTER_ID", "value": sandbox_router_id(owner.name)})
    return env


def peer_secret_name(owner: Owner) -> str:
    return f"{child_name(owner)}-peers"


def peer_secret(owner: Owner) -> Manifest:
    """A random secret shared by the router's replicas (created once, never re-applied: a new
    value would split the replicas until they all restart)."""
    meta = metadata(owner, name=peer_secret_name(owner))
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
            "stringData": {PEER_SECRET_KEY: secrets.token_urlsafe(32)}}  # fmt: skip


def classes_config_map_name(owner: Owner) -> str:
    return f"{child_name(owner)}-classes"


def config_map(owner: Owner, rendered: RenderedConfig) -> Manifest:
    """router.yaml (its hash is in the pod template)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(owner), "data": rendered.data()}


def classes_config_map(owner: Owner, rendered: RenderedConfig) -> Manifest:
    """The AgentPrograms' classes: mounted as a whole volume (no subPath), so the kubelet updates the
    file in running pods and the router reloads it; not in the config hash, so no rollout."""
    meta = metadata(owner, name=classes_config_map_name(owner))
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": rendered.classes_data()}


def deployment(owner: Owner, spec: RouterSpec, rendered: RenderedConfig, images: Images) -> Manifest:
    """The router Deployment; the config hash in the pod template rolls the pods when the config changes."""
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "classes", "mountPath": CLASSES_DIR, "readOnly": True},
        {"name": "state", "mountPath": STATE_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": child_name(owner)}},
        {"name": "classes", "configMap": {"name": classes_config_map_name(owner)}},
        {"name": "state", "emptyDir": {}},
    ]
    if spec.auth is not None:
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
        volumes.append({"name": "api-keys", "secret": {"secretName": spec.auth.api_keys_secret.name}})
    env = _sandbox_env(owner, spec)
    if spec.replicas > 1:
        # Program ownership: each replica tells the others its own address (peers.self), and
        # proves the calls it forwards with a secret only the replicas know.
        env.append({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
        secret = {"secretKeyRef": {"name": peer_secret_name(owner), "key": PEER_SECRET_KEY}}
        env.append({"name": PEER_SECRET_ENV, "valueFrom": secret})
    if rendered.upstream_key is not None:
        key = rendered.upstream_key
        env.append({"name": UPSTREAM_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": key.name, "key": key.key}}})
    container: dict[str, Any] = {
        "name": "router",
        "image": spec.image or images.router,
        "imagePullPolicy": images.pull_policy,
        "command": ["python", "-m", "shoal.router"],
        "args": ["--config", f"{CONFIG_DIR}/router.yaml"],
        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
        "readinessProbe": probe("/health", period=5, failures=3),
        "livenessProbe": probe("/health", period=10, failures=3),
        "lifecycle": pre_stop(),
        "resources": spec.resources.model_dump(exclude_none=True) if spec.resources else {},
        "volumeMounts": mounts,
        "securityContext": {**container_security(), "readOnlyRootFilesystem": True},
    }
    container["env"] = env
    meta = metadata(owner)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(owner)},
            "template": {
                "metadata": {
                    "labels": meta["labels"],
                    "annotations": {
                        ANNOTATION_CONFIG_HASH: config_hash(rendered.data()),
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(ROUTER_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": child_name(owner),
                    "securityContext": pod_security(),
                    "terminationGracePeriodSeconds": PRE_STOP_SECONDS + SHUTDOWN_SECONDS,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def service(owner: Owner, spec: RouterSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner),
        "spec": {
            "type": spec.service.type,
            "selector": selector_labels(owner),
            "ports": [{"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def endpoint_url(owner: Owner, spec: RouterSpec) -> str:
    """The OpenAI base URL clients in the cluster use."""
    return f"http://{child_name(owner)}.{owner.namespace}.svc:{spec.service.port}/v1"


def service_account(owner: Owner) -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(owner)}


DISCOVERY_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list"]},
]
"""Read rights every router needs: it discovers engine replicas (and its peers) by watching
pods, and its sandbox backend lists its pods and NetworkPolicies at start to remove orphans."""
SANDBOX_RULES: list[dict[str, Any]] = [
    {"apiGroups": [group], "resources": [resource], "verbs": list(verbs)} for group, resource, verbs in RBAC_RULES
]
"""Exactly what the Kubernetes sandbox backend calls (its ``RBAC_RULES``; router/sandboxes/RBAC.md):
one pod per sandbox, tools through the exec API, a NetworkPolicy per sandbox, orphans by listing."""


def role(owner: Owner, *, sandboxes: bool) -> Manifest:
    """Namespaced rights of the router's service account: pod discovery, plus sandbox pods only when
    one of its AgentPrograms runs image sandboxes (nothing cluster-wide)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(owner),
        "rules": DISCOVERY_RULES + SANDBOX_RULES if sandboxes else DISCOVERY_RULES,
    }


def role_binding(owner: Owner) -> Manifest:
    name = child_name(owner)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(owner),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }


def router_children(owner: Owner, spec: RouterSpec, rendered: RenderedConfig, images: Images) -> list[Manifest]:
    """Every child of a valid Router, in apply order (RBAC and config before the pods that need them)."""
    return [
        service_account(owner),
        role(owner, sandboxes=rendered.image_sandboxes),
        role_binding(owner),
        config_map(owner, rendered),
        classes_config_map(owner, rendered),
        deployment(owner, spec, rendered, images),
        service(owner, spec),
    ]
