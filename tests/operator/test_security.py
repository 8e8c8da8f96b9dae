"""Security defaults: no cluster-wide Secret access in the chart; engine pods without an API token,
on a read-only root filesystem; pod settings passed through from the ModelPool; no multi-GPU."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from shoal.crds.common import Reason, explain
from shoal.crds.modelpool import ModelPoolSpec
from shoal.operator.builders.common import Images, Owner
from shoal.operator.builders.modelpool import pool_children
from support.tools import ensure_tool

CHART = Path(__file__).resolve().parents[2] / "helm" / "shoal"
OWNER = Owner("ModelPool", "chat", "team", "uid-1")
MODEL = {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "smol"}


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_tool("helm")


def template(helm: Path, *sets: str) -> list[dict[str, Any]]:
    args = [str(helm), "template", "rel", str(CHART), "--namespace", "shoal-system"]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _secret_grants(docs: list[dict[str, Any]]) -> list[tuple[str, str, str | None, set[str]]]:
    """(kind, name, namespace, verbs) of every (Cluster)Role rule that reaches Secrets."""
    found = []
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole"):
            for rule in doc.get("rules", []):
                if "" in rule["apiGroups"] and {"secrets", "*"} & set(rule["resources"]):
                    found.append((doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace"), set(rule["verbs"])))
    return found


def _check_secrets(docs: list[dict[str, Any]]) -> str:
    operator = next(d for d in docs if d["kind"] == "Deployment")
    env = operator["spec"]["template"]["spec"]["containers"][0]["env"]
    return str(next(e["value"] for e in env if e["name"] == "SHOAL_CHECK_SECRETS"))


def test_default_chart_grants_no_secret_access_at_all(helm: Path) -> None:
    docs = template(helm)
    assert _secret_grants(docs) == []
    assert _check_secrets(docs) == "false"
    # And no binding hands the operator a built-in role that reaches Secrets (admin, edit, view...).
    refs = [d["roleRef"]["name"] for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert all(name.startswith("rel-shoal-operator") for name in refs), refs


def test_secret_access_is_namespaced_to_the_watched_namespaces(helm: Path) -> None:
    docs = template(helm, "operator.watchNamespaces={team-a,team-b}")
    grants = _secret_grants(docs)
    assert sorted((kind, ns) for kind, _, ns, _ in grants) == [("Role", "team-a"), ("Role", "team-b")]
    assert all(verbs == {"get", "create"} for *_, verbs in grants)
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["name"].endswith("-secrets")]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert _check_secrets(docs) == "true"


def test_secret_namespaces_can_be_narrower_than_the_watched_ones(helm: Path) -> None:
    docs = template(helm, "operator.watchNamespaces={team-a,team-b}", "rbac.secretNamespaces={team-a}")
    assert [(kind, ns) for kind, _, ns, _ in _secret_grants(docs)] == [("Role", "team-a")]
    assert _check_secrets(docs) == "false"  # team-b would answer 403: the operator does not look
    everywhere = template(helm, "rbac.secretNamespaces={team-a}")  # watching all namespaces
    assert [(kind, ns) for kind, _, ns, _ in _secret_grants(everywhere)] == [("Role", "team-a")]


def _pool(**fields: Any) -> ModelPoolSpec:
    return ModelPoolSpec.model_validate({"model": MODEL, **fields})


def _engine(spec: ModelPoolSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    children = pool_children(OWNER, spec, Images(), keda=False)
    deployment = next(c for c in children if c["kind"] == "Deployment")
    template_ = deployment["spec"]["template"]
    return template_, template_["spec"], template_["spec"]["containers"][0]


def test_engine_pods_run_on_their_own_service_account_without_a_token() -> None:
    children = pool_children(OWNER, _pool(), Images(), keda=False)
    account = next(c for c in children if c["kind"] == "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert account["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    _, pod, _ = _engine(_pool())
    assert pod["serviceAccountName"] == account["metadata"]["name"] != "default"
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("uri", ["bundled:smollm2-135m-instruct", "https://example.com/m.gguf", "pvc://w/m"])
def test_engine_root_filesystem_is_read_only_with_writable_tmp_and_caches(uri: str) -> None:
    _, pod, container = _engine(_pool(model={"uri": uri, "servedModelName": "m"}))
    for c in [container, *pod.get("initContainers", [])]:
        security = c["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]] and "emptyDir" in volumes[mounts["/home/shoal/.cache"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    for name in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        assert env[name].startswith("/home/shoal"), name
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001


def test_pod_settings_and_image_pull_secrets_pass_through() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}]}}}  # fmt: skip
    spec = _pool(
        imagePullSecrets=[{"name": "registry"}],
        pod={
            "env": [{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}}, {"name": "HF_HOME", "value": "/x"}],
            "annotations": {"team": "search", "prometheus.io/scrape": "false"},
            "affinity": affinity,
            "priorityClassName": "inference-high",
        },
    )
    template_, pod, container = _engine(spec)
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["affinity"] == affinity and pod["priorityClassName"] == "inference-high"
    assert template_["metadata"]["annotations"]["team"] == "search"
    assert template_["metadata"]["annotations"]["prometheus.io/scrape"] == "true"  # Shoal's scrape settings win
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in container["env"]
    assert [e.get("value") for e in container["env"] if e["name"] == "HF_HOME"] == ["/x"]  # replaces the default


def _reason(**fields: Any) -> str:
    with pytest.raises(ValidationError) as exc:
        _pool(**fields)
    return explain(exc.value)[0].value


def test_multi_gpu_replicas_are_refused_until_tensor_parallelism_exists() -> None:
    assert _reason(resources={"limits": {"nvidia.com/gpu": 2}}) == Reason.FEATURE_NOT_SUPPORTED
    assert _pool(resources={"limits": {"nvidia.com/gpu": 1}}).gpus == 1


def test_the_operators_own_variables_cannot_be_overridden() -> None:
    assert _reason(pod={"env": [{"name": "SHOAL_API_KEY", "value": "guess"}]}) == Reason.SPEC_INVALID
    assert _reason(pod={"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}) == Reason.SPEC_INVALID
