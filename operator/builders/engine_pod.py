"""The engine pod's security and pass-through settings: its own ServiceAccount with no API token,
a read-only root filesystem with writable emptyDirs where the engine writes, the cache
environment, and what ModelPool.spec.pod / imagePullSecrets pass through."""

from __future__ import annotations

from typing import Any

from shoal.crds.modelpool import ModelPoolSpec
from shoal.operator.builders.common import Manifest, Owner, child_name, container_security, metadata
from shoal.operator.builders.engine_args import ENGINE_API_KEY_ENV

HOME = "/home/shoal"
CACHE_DIR = f"{HOME}/.cache"
WRITABLE_DIRS = (("tmp", "/tmp"), ("cache", CACHE_DIR))
"""(volume, mount path): the only places an engine writes (its root filesystem is read-only)."""
CACHE_ENV = (
    ("HOME", HOME),
    ("XDG_CACHE_HOME", CACHE_DIR),
    ("HF_HOME", f"{CACHE_DIR}/huggingface"),
    ("TRITON_CACHE_DIR", f"{CACHE_DIR}/triton"),
    ("TORCHINDUCTOR_CACHE_DIR", f"{CACHE_DIR}/inductor"),
)
"""Set on the container, not only in Shoal's image, so a custom spec.image writes there too."""


def engine_container_security() -> dict[str, Any]:
    """No privilege escalation, no capabilities, read-only root filesystem."""
    return {**container_security(), "readOnlyRootFilesystem": True}


def writable_volumes() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The emptyDir volumes and their mounts."""
    volumes = [{"name": name, "emptyDir": {}} for name, _ in WRITABLE_DIRS]
    mounts = [{"name": name, "mountPath": path} for name, path in WRITABLE_DIRS]
    return volumes, mounts


def engine_env(spec: ModelPoolSpec) -> list[dict[str, Any]]:
    """Cache locations, the API key (from its Secret) and spec.pod.env (which may replace a cache
    location; SHOAL_* names are refused by the spec)."""
    user = spec.pod.env if spec.pod and spec.pod.env else []
    named = {e.name for e in user}
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in CACHE_ENV if k not in named]
    if spec.engine.auth is not None:
        ref = spec.engine.auth.api_key_secret_ref
        env.append({"name": ENGINE_API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    for var in user:
        if var.secret_key_ref is not None:
            source = {"secretKeyRef": {"name": var.secret_key_ref.name, "key": var.secret_key_ref.key}}
            env.append({"name": var.name, "valueFrom": source})
        else:
            env.append({"name": var.name, "value": var.value})
    return env


def service_account(owner: Owner) -> Manifest:
    """The engines' own ServiceAccount: no RBAC binds it, and it mounts no token."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(owner),
        "automountServiceAccountToken": False,
    }


def apply_pod_settings(owner: Owner, spec: ModelPoolSpec, pod: dict[str, Any], annotations: dict[str, str]) -> None:
    """Set the ServiceAccount and what the spec passes through on ``pod`` and the template
    ``annotations`` (Shoal's own annotations win over spec.pod.annotations)."""
    pod["serviceAccountName"] = child_name(owner)
    pod["automountServiceAccountToken"] = False
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": ref.name} for ref in spec.image_pull_secrets]
    settings = spec.pod
    if settings is None:
        return
    if settings.affinity:
        pod["affinity"] = settings.affinity
    if settings.priority_class_name:
        pod["priorityClassName"] = settings.priority_class_name
    if settings.annotations:
        merged = {**settings.annotations, **annotations}
        annotations.clear()
        annotations.update(merged)
