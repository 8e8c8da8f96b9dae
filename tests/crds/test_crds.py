"""CRDs: committed YAML matches the models, examples validate, bad resources are rejected."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shoal.crds import AgentProgram, ModelPool, Router
from shoal.crds.generate import KINDS, crd, drift

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.32.0"
MODELS = {"ModelPool": ModelPool, "Router": Router, "AgentProgram": AgentProgram}


def schema_of(kind: str) -> dict[str, Any]:
    k = next(k for k in KINDS if k.kind == kind)
    return crd(k)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown fields as `kubectl apply` (server-side strict field validation) does."""
    out = copy.deepcopy(schema)

    def walk(node: dict[str, Any]) -> None:
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
        for sub in node.get("properties", {}).values():
            walk(sub)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])

    walk(out)
    out["properties"]["metadata"] = {"type": "object"}
    return out


def validator(kind: str) -> jsonschema.Draft4Validator:
    # CRD schemas are OpenAPI 3.0: boolean exclusiveMinimum, as in JSON Schema draft 4.
    return jsonschema.Draft4Validator(strict(schema_of(kind)))


def examples() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((REPO / "crds" / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] in MODELS:
                docs.append((f"{path.relative_to(REPO)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


def test_committed_crds_match_the_models() -> None:
    assert drift() == [], "run: python -m shoal.crds.generate"


def test_chart_and_generated_copies_are_identical() -> None:
    for k in KINDS:
        name = f"shoal.dev_{k.plural}.yaml"
        assert (REPO / "crds" / "generated" / name).read_text() == (REPO / "helm/shoal/crds" / name).read_text()


@pytest.mark.parametrize("kind", [k.kind for k in KINDS])
def test_crd_is_a_valid_structural_crd(kind: str) -> None:
    k = next(k for k in KINDS if k.kind == kind)
    manifest = crd(k)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    text = yaml.safe_dump(manifest)
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "additionalProperties: false", "&id", "title:"):
        assert forbidden not in text
    version = manifest["spec"]["versions"][0]
    assert "status" in version["subresources"]
    assert [c["name"] for c in version["additionalPrinterColumns"]][-1] == "Age"
    assert ("scale" in version["subresources"]) == (kind == "ModelPool")


def test_every_field_has_a_description() -> None:
    def walk(node: dict[str, Any], path: str) -> list[str]:
        missing = []
        for name, sub in node.get("properties", {}).items():
            if "description" not in sub:
                missing.append(f"{path}.{name}")
            missing += walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            missing += walk(node["items"], path + "[]")
        return missing

    for k in KINDS:
        schema = schema_of(k.kind)
        assert walk(schema["properties"]["spec"], f"{k.kind}.spec") == []
        assert walk(schema["properties"]["status"], f"{k.kind}.status") == []


def test_modelpool_printer_columns() -> None:
    version = crd(KINDS[0])["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:3] == ["Model", "Replicas", "Ready"]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"


@pytest.mark.parametrize(("name", "doc"), examples(), ids=[e[0] for e in examples()])
def test_examples_validate_against_schema_and_models(name: str, doc: dict[str, Any]) -> None:
    validator(doc["kind"]).validate(doc)
    MODELS[doc["kind"]].model_validate(doc)


def test_local_examples_have_one_pool_a_router_and_an_agentprogram() -> None:
    kinds = [doc["kind"] for name, doc in examples() if "/local/" in name]
    assert sorted(kinds) == ["AgentProgram", "ModelPool", "Router"]


POOL = {
    "apiVersion": "shoal.dev/v1alpha1",
    "kind": "ModelPool",
    "metadata": {"name": "p"},
    "spec": {"model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "m"}},
}


def _with(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node = out
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(leaf)
    else:
        node[leaf] = value
    return out


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.replicas", -1),
        ("spec.replicas", "two"),
        ("spec.engine.dtype", "int8"),
        ("spec.engine.device", "tpu"),
        ("spec.engine.blockSize", 12),
        ("spec.engine.kvCacheMemoryGb", 0),
        ("spec.engine.maxNumSeqs", 0),
        ("spec.engine.typo", 1),
        ("spec.model", _DELETE),
        ("spec.model.servedModelName", ""),
        ("spec.model.uri", "no-scheme"),
        ("spec.autoscaling", {"minReplicas": 1}),
        ("spec.tolerations", [{"operator": "Sometimes"}]),
    ],
)
def test_invalid_modelpools_are_rejected_by_the_schema(path: str, value: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator("ModelPool").validate(_with(POOL, path, value))


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        ("Router", {"pools": []}),
        ("Router", {"pools": [{"name": "Not_A_Name"}]}),
        ("Router", {"pools": [{"name": "a"}], "picking": {"prefix": {"mode": "psychic"}}}),
        ("Router", {"pools": [{"name": "a"}], "timeouts": {"connectS": 0}}),
        ("Router", {"pools": [{"name": "a", "tokenizer": {"source": "guess"}}]}),
        ("Router", {"pools": [{"name": "a"}], "programs": {"classesFile": "/x"}}),
        ("Router", {"pools": [{"name": "a"}], "service": {"type": "ExternalName"}}),
        ("Router", {"pools": [{"name": "a"}], "rateLimits": {"default": {"requestsPerSecond": 0, "burst": 1}}}),
        ("AgentProgram", {"model": "m"}),
        ("AgentProgram", {"router": "r", "model": "m", "priority": 101}),
        ("AgentProgram", {"router": "r", "model": "m", "sandbox": {"network": "internet"}}),
    ],
)
def test_invalid_routers_and_programs_are_rejected_by_the_schema(kind: str, spec: dict[str, Any]) -> None:
    doc = {"apiVersion": "shoal.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    with pytest.raises(jsonschema.ValidationError):
        validator(kind).validate(doc)
