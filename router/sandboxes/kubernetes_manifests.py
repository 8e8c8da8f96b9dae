"""Pure builders of a Kubernetes sandbox's objects: its Pod and its NetworkPolicy.

The pod runs the class's image under the restricted Pod Security profile (non-root, no
privilege escalation, every capability dropped, RuntimeDefault seccomp, read-only root
filesystem with an emptyDir as the only writable place, no service-account token). Its
first process only waits; tools run through the exec API.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from shoal.router.programs.config import ProgramClassConfig

SANDBOX_LABEL = "shoal.dev/sandbox"
PROGRAM_LABEL = "shoal.dev/program"
CLASS_LABEL = "shoal.dev/program-class"
ROUTER_LABEL = "shoal.dev/router"
ROUTER_GROUP_LABEL = "shoal.dev/router-group"
SANDBOX_ID_LABEL = "shoal.dev/sandbox-id"
PROGRAM_ANNOTATION = "shoal.dev/program-id"
SANDBOX_UID = 65532
WORK_DIR = "/work"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_IDLE = "trap 'exit 0' TERM INT; while true; do sleep 3600 & wait $!; done"
"""The pod's first process: waits (and ends on SIGTERM) so tools can be exec'd into the pod."""


def pod_name(sandbox_id: str) -> str:
    return f"shoal-{sandbox_id}"


def program_label(program_id: str | None) -> str:
    """A label value for a program id (ids that are not valid label values are hashed;
    the annotation keeps the id itself)."""
    if program_id is None:
        return ""
    if _LABEL_VALUE.match(program_id):
        return program_id
    return "h-" + hashlib.sha256(program_id.encode()).hexdigest()[:40]


def labels(
    sandbox_id: str, cls: ProgramClassConfig, program_id: str | None, router_id: str, router_group: str | None = None
) -> dict[str, str]:
    out = {
        SANDBOX_LABEL: "true",
        SANDBOX_ID_LABEL: sandbox_id,
        CLASS_LABEL: cls.name,
        PROGRAM_LABEL: program_label(program_id),
        ROUTER_LABEL: router_id,
    }
    if router_group is not None:
        out[ROUTER_GROUP_LABEL] = router_group
    return out


def _metadata(
    sandbox_id: str, cls: ProgramClassConfig, program_id: str | None, router_id: str, namespace: str,
    router_group: str | None,
) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {
        "name": pod_name(sandbox_id),
        "namespace": namespace,
        "labels": labels(sandbox_id, cls, program_id, router_id, router_group),
        "annotations": {PROGRAM_ANNOTATION: program_id or ""},
    }
    if cls.owner is not None:
        meta["ownerReferences"] = [{
            "apiVersion": cls.owner.api_version, "kind": cls.owner.kind, "name": cls.owner.name,
            "uid": cls.owner.uid, "controller": True, "blockOwnerDeletion": False,
        }]  # fmt: skip
    return meta


def _resources(cls: ProgramClassConfig) -> dict[str, dict[str, str]]:
    assert cls.sandbox is not None
    res = cls.sandbox.resources
    out = {k: dict(v) for k, v in (res.kubernetes or {}).items()}
    if res.memory_bytes is not None:
        out.setdefault("limits", {})["memory"] = str(res.memory_bytes)
    if res.disk_bytes is not None:
        out.setdefault("limits", {})["ephemeral-storage"] = str(res.disk_bytes)
    return out


def sandbox_pod(
    sandbox_id: str, cls: ProgramClassConfig, program_id: str | None, router_id: str, namespace: str,
    router_group: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The sandbox's Pod."""
    spec = cls.sandbox
    if spec is None or spec.image is None:
        raise ValueError(f"class {cls.name}: a Kubernetes sandbox needs sandbox.image")
    empty_dir: dict[str, str] = {}
    if spec.resources.disk_bytes is not None:
        empty_dir["sizeLimit"] = str(spec.resources.disk_bytes)
    container = {
        "name": "sandbox",
        "image": spec.image,
        "command": ["sh", "-c", _IDLE],
        "workingDir": WORK_DIR,
        "env": [{"name": "HOME", "value": WORK_DIR}, {"name": "TMPDIR", "value": "/tmp"}],
        "resources": _resources(cls),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SANDBOX_UID,
            "runAsGroup": SANDBOX_UID,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "work", "mountPath": WORK_DIR},
            {"name": "work", "mountPath": "/tmp", "subPath": ".tmp"},
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(sandbox_id, cls, program_id, router_id, namespace, router_group),
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": SANDBOX_UID,
                "runAsGroup": SANDBOX_UID,
                "fsGroup": SANDBOX_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [{"name": "work", "emptyDir": empty_dir}],
        },
    }


def sandbox_network_policy(
    sandbox_id: str, cls: ProgramClassConfig, program_id: str | None, router_id: str, namespace: str,
    router_group: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """No ingress at all; no egress with ``network: none``, any egress with ``network: egress``."""
    assert cls.sandbox is not None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(sandbox_id, cls, program_id, router_id, namespace, router_group),
        "spec": {
            "podSelector": {"matchLabels": {SANDBOX_ID_LABEL: sandbox_id}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [] if cls.sandbox.network == "none" else [{}],
        },
    }
