"""ModelPool -> Deployment, Service, PodDisruptionBudget and an autoscaler (HPA or KEDA ScaledObject)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.crds.modelpool import ModelPoolSpec, parse_model_uri
from shoal.operator.builders.common import (
    ENGINE_PORT,
    PRE_STOP_SECONDS,
    Images,
    Manifest,
    Owner,
    child_name,
    metadata,
    pod_security,
    pre_stop,
    probe,
    quantity,
    selector_labels,
)
from shoal.operator.builders.engine_args import engine_args
from shoal.operator.builders.engine_pod import (
    apply_pod_settings,
    engine_container_security,
    engine_env,
    service_account,
    writable_volumes,
)

MODEL_DIR = "/models"
WAITING_METRIC = "vllm:num_requests_waiting"
EXIT_MARGIN_SECONDS = 5
"""Grace beyond the drain timeout: the engine aborts what is left, answers it, and exits."""


@dataclass(frozen=True)
class ModelMount:
    """How a replica reaches its model: the ``--model`` value plus volumes and an optional init container."""

    model_arg: str
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    download_url: str | None = None


def model_mount(uri: str) -> ModelMount:
    """The volume plan of a model URI (already validated by the CRD model)."""
    src = parse_model_uri(uri)
    if src.scheme == "bundled":
        return ModelMount(model_arg=f"bundled:{src.location}")
    if src.scheme == "file":
        return ModelMount(model_arg=src.location)
    target = f"{MODEL_DIR}/{src.file_name}"
    if src.scheme == "hostpath":
        kind = "File" if src.location.endswith(".gguf") else "Directory"
        return ModelMount(
            model_arg=target,
            volumes=[{"name": "model", "hostPath": {"path": src.location, "type": kind}}],
            mounts=[{"name": "model", "mountPath": target, "readOnly": True}],
        )
    if src.scheme == "pvc":
        return ModelMount(
            model_arg=f"{MODEL_DIR}/{src.location}",
            volumes=[{"name": "model", "persistentVolumeClaim": {"claimName": src.claim, "readOnly": True}}],
            mounts=[{"name": "model", "mountPath": MODEL_DIR, "readOnly": True}],
        )
    return ModelMount(
        model_arg=target,
        volumes=[{"name": "model", "emptyDir": {}}],
        mounts=[{"name": "model", "mountPath": MODEL_DIR, "readOnly": True}],
        download_url=src.location,
    )


def desired_replicas(spec: ModelPoolSpec) -> int:
    """spec.replicas, kept inside the autoscaling bounds when autoscaling is on."""
    a = spec.autoscaling
    if a is None:
        return spec.replicas
    return min(max(spec.replicas, a.min_replicas), a.max_replicas)


def _resources(spec: ModelPoolSpec) -> dict[str, Any]:
    if spec.resources is None:
        return {}
    return spec.resources.model_dump(exclude_none=True)


def deployment(owner: Owner, spec: ModelPoolSpec, images: Images) -> Manifest:
    """The engine Deployment: one pod per replica, probes on /health, Prometheus scrape annotations."""
    mount = model_mount(spec.model.uri)
    writable, writable_mounts = writable_volumes()
    gpu = spec.gpus > 0
    container: dict[str, Any] = {
        "name": "engine",
        "image": spec.image or images.engine,
        "imagePullPolicy": images.pull_policy,
        "command": ["python", "-m", "shoal.engine"],
        "args": engine_args(spec, mount.model_arg, host="0.0.0.0", port=ENGINE_PORT),
        "ports": [{"name": "http", "containerPort": ENGINE_PORT, "protocol": "TCP"}],
        # Loading weights can take minutes; the startup probe holds liveness off until /health answers.
        "startupProbe": probe("/health", period=10, failures=90),
        "readinessProbe": probe("/health", period=5, failures=3),
        "livenessProbe": probe("/health", period=15, failures=4, timeout=5),
        "lifecycle": pre_stop(),
        "resources": _resources(spec),
        "env": engine_env(spec),
        "volumeMounts": [*mount.mounts, *writable_mounts],
        "securityContext": engine_container_security(),
    }
    volumes = [*mount.volumes, *writable]
    if gpu:
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
    pod: dict[str, Any] = {
        "securityContext": pod_security(),
        # preStop pause, then SIGTERM: the engine drains for up to its drain timeout and exits.
        "terminationGracePeriodSeconds": PRE_STOP_SECONDS + spec.engine.drain_timeout_seconds + EXIT_MARGIN_SECONDS,
        "containers": [container],
        "volumes": volumes,
    }
    if mount.download_url is not None:
        pod["initContainers"] = [
            {
                "name": "fetch-model",
                "image": spec.image or images.engine,
                "imagePullPolicy": images.pull_policy,
                "command": ["python", "-c", "import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:3])"],
                "args": [mount.download_url, mount.model_arg],
                "volumeMounts": [{"name": "model", "mountPath": MODEL_DIR}],
                "securityContext": engine_container_security(),
            }
        ]
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [t.model_dump(exclude_none=True) for t in spec.tolerations]
    meta = metadata(owner)
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(ENGINE_PORT),
        "prometheus.io/path": "/metrics",
    }
    apply_pod_settings(owner, spec, pod, annotations)
    # GPU pools have no spare GPU to surge onto: replace one replica at a time instead.
    rolling = {"maxSurge": 0, "maxUnavailable": 1} if gpu else {"maxSurge": 1, "maxUnavailable": 0}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": desired_replicas(spec),
            "selector": {"matchLabels": selector_labels(owner)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
            "template": {
                "metadata": {"labels": meta["labels"], "annotations": annotations},
                "spec": pod,
            },
        },
    }


def service(owner: Owner) -> Manifest:
    """A ClusterIP Service over the replicas (direct access and scraping; the router watches pods)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner),
            "ports": [{"name": "http", "port": ENGINE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def service_url(owner: Owner) -> str:
    return f"http://{child_name(owner)}.{owner.namespace}.svc:{ENGINE_PORT}"


def pod_disruption_budget(owner: Owner) -> Manifest:
    """At most one replica down at a time for voluntary disruptions (drains, upgrades)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner)}},
    }


KEDA_PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"


def _scale_target(owner: Owner) -> dict[str, str]:
    # The autoscaler scales the ModelPool through its scale subresource, so spec.replicas stays the truth.
    return {"apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name}


def horizontal_pod_autoscaler(owner: Owner, spec: ModelPoolSpec) -> Manifest:
    """An HPA on the per-pod custom metric vllm:num_requests_waiting (served by a metrics adapter)."""
    a = spec.autoscaling
    assert a is not None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(owner),
        "spec": {
            "scaleTargetRef": _scale_target(owner),
            # Never 0 (an alpha feature gate): at zero replicas the HPA stands still, and the
            # operator's scale-to-zero loop owns the steps between 0 and 1 (operator/scale_to_zero.py).
            "minReplicas": max(1, a.min_replicas),
            "maxReplicas": a.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": WAITING_METRIC},
                        "target": {"type": "AverageValue", "averageValue": quantity(a.target_waiting_requests)},
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": a.scale_down_stabilization_seconds}},
        },
    }


def scaled_object(owner: Owner, spec: ModelPoolSpec) -> Manifest:
    """A KEDA ScaledObject with a Prometheus trigger on the pool's summed waiting requests."""
    a = spec.autoscaling
    assert a is not None
    query = f'sum({WAITING_METRIC}{{namespace="{owner.namespace}",pod=~"{child_name(owner)}-.*"}})'
    # KEDA would raise a target below minReplicaCount back up: it pauses at zero instead, and the
    # operator's scale-to-zero loop owns the steps between 0 and 1.
    meta = metadata(owner, annotations={KEDA_PAUSED_REPLICAS: "0"} if desired_replicas(spec) == 0 else None)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": _scale_target(owner),
            "minReplicaCount": max(1, a.min_replicas),
            "maxReplicaCount": a.max_replicas,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": a.scale_down_stabilization_seconds}}
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": a.prometheus_address,
                        "query": query,
                        "threshold": f"{a.target_waiting_requests:g}",
                    },
                }
            ],
        },
    }


def pool_children(owner: Owner, spec: ModelPoolSpec, images: Images, *, keda: bool) -> list[Manifest]:
    """Every child of a valid ModelPool, in apply order."""
    children = [deployment(owner, spec, images), service_account(owner), service(owner), pod_disruption_budget(owner)]
    if spec.autoscaling is not None:
        children.append(scaled_object(owner, spec) if keda else horizontal_pod_autoscaler(owner, spec))
    return children
