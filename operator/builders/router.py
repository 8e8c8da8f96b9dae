"""Router -> ConfigMap, Deployment (rolled on config change), Service, and pod-discovery RBAC."""

from __future__ import annotations

from typing import Any

from shoal.crds import RouterSpec
from shoal.operator.builders.common import (
    ANNOTATION_CONFIG_HASH,
    ROUTER_PORT,
    Images,
    Manifest,
    Owner,
    child_name,
    config_hash,
    container_security,
    metadata,
    pod_security,
    probe,
    selector_labels,
)
from shoal.operator.builders.router_config import API_KEYS_DIR, RenderedConfig

CONFIG_DIR = "/etc/shoal/router"


def config_map(owner: Owner, rendered: RenderedConfig) -> Manifest:
    """router.yaml and programs.yaml."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(owner), "data": rendered.data()}


def deployment(owner: Owner, spec: RouterSpec, rendered: RenderedConfig, images: Images) -> Manifest:
    """The router Deployment; the config hash in the pod template rolls the pods when the config changes."""
    mounts: list[dict[str, Any]] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": child_name(owner)}}]
    if spec.auth is not None:
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
        volumes.append({"name": "api-keys", "secret": {"secretName": spec.auth.api_keys_secret.name}})
    container = {
        "name": "router",
        "image": spec.image or images.router,
        "imagePullPolicy": images.pull_policy,
        "command": ["python", "-m", "shoal.router"],
        "args": ["--config", f"{CONFIG_DIR}/router.yaml"],
        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
        "readinessProbe": probe("/health", period=5, failures=3),
        "livenessProbe": probe("/health", period=10, failures=3),
        "resources": spec.resources.model_dump(exclude_none=True) if spec.resources else {},
        "volumeMounts": mounts,
        "securityContext": {**container_security(), "readOnlyRootFilesystem": True},
    }
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


def role(owner: Owner) -> Manifest:
    """Read access to pods in the namespace: the router discovers engine replicas by watching them."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(owner),
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
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
        role(owner),
        role_binding(owner),
        config_map(owner, rendered),
        deployment(owner, spec, rendered, images),
        service(owner, spec),
    ]
