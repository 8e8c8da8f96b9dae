"""The CRDs' admission checks (CEL rules, quantity patterns) agree with the pydantic validation.

Each spec below is judged twice: as the API server would (schema defaults applied, the
openAPIV3Schema's patterns and bounds, every ``x-kubernetes-validations`` rule evaluated with a
CEL interpreter) and by the spec model the operator uses. Both must accept or both must refuse,
with the rule that fails naming the reason the operator would report.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any

import celpy
import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from shoal.crds import agentprogram, common, model_source, modelpool, pod
from shoal.crds.cel import CelRule, rules_of
from shoal.crds.common import Reason, explain
from shoal.crds.generate import KINDS, crd
from shoal.router import config_routes

_CEL = celpy.Environment()
_KINDS = {kind.kind: kind for kind in KINDS}


def _declared_rules() -> dict[str, CelRule]:
    rules: dict[str, CelRule] = {}
    for module in (common, model_source, pod, modelpool, agentprogram, config_routes):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseModel):
                rules.update((rule.rule, rule) for rule in rules_of(cls))
    return rules


RULES = _declared_rules()


def _spec_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = crd(_KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]


def _with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults filled in, as the API server stores it."""
    if isinstance(value, dict) and schema.get("type") == "object":
        out = dict(value)
        for name, sub in schema.get("properties", {}).items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = _with_defaults(sub, out[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(out) - set(schema.get("properties", {})):
                out[name] = _with_defaults(extra, out[name])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_with_defaults(schema["items"], item) for item in value]
    return value


@functools.cache
def _program(rule: str) -> celpy.Runner:
    return _CEL.program(_CEL.compile(rule))


def _failed_rules(schema: dict[str, Any], value: Any) -> list[CelRule]:
    """Every x-kubernetes-validations rule of the schema tree that ``value`` breaks."""
    failed = []
    for entry in schema.get("x-kubernetes-validations", []):
        try:
            ok = _program(entry["rule"]).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError:
            ok = False  # the API server reports an evaluation error as a failed rule
        if not ok:
            failed.append(RULES[entry["rule"]])
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                failed += _failed_rules(sub, value[name])
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            failed += _failed_rules(schema["items"], item)
    return failed


def api_server_verdict(kind: str, spec: dict[str, Any]) -> set[str] | None:
    """None when the API server would store ``spec``; else the reasons of the failed CEL rules
    ("schema" for a failed pattern, bound or type)."""
    schema = _spec_schema(kind)
    stored = _with_defaults(schema, spec)
    if any(True for _ in jsonschema.Draft4Validator(schema).iter_errors(stored)):
        return {"schema"}
    failed = _failed_rules(schema, stored)
    return {rule.reason for rule in failed} or None


def operator_verdict(kind: str, spec: dict[str, Any]) -> str | None:
    """None when the operator's spec model accepts ``spec``; else the condition reason."""
    try:
        _KINDS[kind].spec.model_validate(spec)
    except ValidationError as exc:
        return explain(exc)[0].value
    return None


POOL = {"model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "smol"}}
PROGRAM = {"router": "main", "model": "smol"}
TOOL = {"name": "ls", "command": ["ls"]}


def pool(**fields: Any) -> dict[str, Any]:
    return {**copy.deepcopy(POOL), **fields}


def gpu(limits: Any = None, requests: Any = None, **engine: Any) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if limits is not None:
        resources["limits"] = {"nvidia.com/gpu": limits}
    if requests is not None:
        resources["requests"] = {"nvidia.com/gpu": requests}
    return pool(resources=resources, **({"engine": engine} if engine else {}))


def uri(value: str) -> dict[str, Any]:
    return pool(model={"uri": value, "servedModelName": "m"})


# (kind, spec, the reason both sides give, or None for a valid spec)
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("ModelPool", pool(), None),
    ("ModelPool", pool(autoscaling={"maxReplicas": 3}), None),
    ("ModelPool", pool(autoscaling={"minReplicas": 2, "maxReplicas": 2}), None),
    ("ModelPool", pool(autoscaling={"minReplicas": 3, "maxReplicas": 2}), Reason.AUTOSCALING_INVALID),
    ("ModelPool", pool(autoscaling={"minReplicas": 0, "maxReplicas": 2}), None),
    ("ModelPool", pool(autoscaling={"minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfterSeconds": 60}), None),
    ("ModelPool", pool(autoscaling={"maxReplicas": 2, "scaleToZeroAfterSeconds": 60}), Reason.AUTOSCALING_INVALID),
    ("ModelPool", pool(adapters=[]), None),
    ("ModelPool", pool(adapters=[{"name": "a", "uri": "file:///a"}]), Reason.FEATURE_NOT_SUPPORTED),
    ("ModelPool", gpu(1), None),
    ("ModelPool", gpu("1"), None),
    ("ModelPool", gpu(0), None),
    ("ModelPool", gpu(2), Reason.FEATURE_NOT_SUPPORTED),
    ("ModelPool", gpu("8"), Reason.FEATURE_NOT_SUPPORTED),
    ("ModelPool", gpu("1.5"), Reason.RESOURCES_INVALID),
    ("ModelPool", gpu("500m"), Reason.RESOURCES_INVALID),
    ("ModelPool", gpu(-1), Reason.RESOURCES_INVALID),
    ("ModelPool", gpu(1, requests=1), None),
    ("ModelPool", gpu(requests=1), Reason.RESOURCES_INVALID),
    ("ModelPool", gpu(1, requests="1"), None),
    ("ModelPool", gpu(device="cuda"), Reason.RESOURCES_INVALID),
    ("ModelPool", gpu(0, device="cuda"), Reason.RESOURCES_INVALID),
    ("ModelPool", gpu(1, device="cuda"), None),
    ("ModelPool", gpu(1, device="cpu"), Reason.RESOURCES_INVALID),
    ("ModelPool", gpu(0, device="cpu"), None),
    ("ModelPool", gpu(device="cpu"), None),
    ("ModelPool", pool(resources={"limits": {"memory": "2Gi", "cpu": "500m"}, "requests": {"cpu": 2}}), None),
    ("ModelPool", pool(resources={"requests": {"memory": "1.5e3"}}), None),
    ("ModelPool", pool(resources={"limits": {"memory": "lots"}}), "schema"),
    ("ModelPool", pool(resources={"requests": {"cpu": "2 cores"}}), "schema"),
    ("ModelPool", pool(resources={"requests": {"cpu": "1" * 65}}), "schema"),
    *[
        ("ModelPool", uri(value), None)
        for value in (
            "bundled:smollm2-135m-instruct",
            "file:///models/x.gguf",
            "file:/models/x",
            "file:////x",
            "hostpath:///data/qwen",
            "hostpath:///data/qwen?x=1",
            "pvc://weights/qwen",
            "pvc://weights//qwen/",
            "https://example.com/m.gguf",
            "http://example.com/a/b/m.gguf?download=1",
        )
    ],
    *[
        ("ModelPool", uri(value), Reason.MODEL_SOURCE_INVALID)
        for value in (
            "bundled:llama",
            "bundled:smollm2-135m-instruct2",
            "s3://bucket/model.gguf",
            "hf:Qwen/Qwen2",
            "file://host/models",
            "file:models/x",
            "file:///",
            "file:/",
            "file:///?x",
            "hostpath://x",
            "pvc://weights",
            "pvc://weights/",
            "pvc:///qwen",
            "pvc://weights///",
            "https://example.com/model.bin",
            "https:///m.gguf",
            "https://example.com/m.gguf/",
            "http:m.gguf",
        )
    ],
    ("ModelPool", pool(pod={"env": [{"name": "HF_TOKEN", "secretKeyRef": {"name": "hf"}}, {"name": "A", "value": ""}]}), None),
    ("ModelPool", pool(pod={"env": [{"name": "A"}]}), Reason.SPEC_INVALID),
    ("ModelPool", pool(pod={"env": [{"name": "A", "value": "1", "secretKeyRef": {"name": "s"}}]}), Reason.SPEC_INVALID),
    ("ModelPool", pool(pod={"env": [{"name": "SHOAL_API_KEY", "value": "x"}]}), Reason.SPEC_INVALID),
    ("ModelPool", pool(pod={"affinity": {"nodeAffinity": {}}, "priorityClassName": "high"}), None),
    ("ModelPool", pool(imagePullSecrets=[{"name": "registry"}]), None),
    *[
        ("Router", {"pools": [{"name": "p"}], "routes": [{"model": "m", **route}]}, reason)
        for route, reason in (
            ({"pool": "p"}, None),
            ({"split": [{"pool": "p", "weight": 1}]}, None),
            ({}, Reason.ROUTES_INVALID),
            ({"pool": "p", "split": [{"pool": "p", "weight": 1}]}, Reason.ROUTES_INVALID),
            ({"split": []}, Reason.ROUTES_INVALID),
        )
    ],
    ("AgentProgram", dict(PROGRAM), None),
    ("AgentProgram", {**PROGRAM, "tools": [TOOL]}, Reason.SANDBOX_INVALID),
    ("AgentProgram", {**PROGRAM, "tools": []}, None),
    ("AgentProgram", {**PROGRAM, "tools": [TOOL], "sandbox": {"image": "busybox"}}, None),
    ("AgentProgram", {**PROGRAM, "tools": [TOOL], "sandbox": {"command": ["sh"]}}, None),
    ("AgentProgram", {**PROGRAM, "sandbox": {"image": "busybox", "command": []}}, None),
    ("AgentProgram", {**PROGRAM, "sandbox": {"image": "busybox", "command": ["sh"]}}, Reason.SANDBOX_INVALID),
    ("AgentProgram", {**PROGRAM, "sandbox": {}}, Reason.SANDBOX_INVALID),
    ("AgentProgram", {**PROGRAM, "sandbox": {"command": []}}, Reason.SANDBOX_INVALID),
    ("AgentProgram", {**PROGRAM, "sandbox": {"image": "x", "resources": {"limits": {"memory": "lots"}}}}, "schema"),
]


@pytest.mark.parametrize(("kind", "spec", "reason"), CASES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(CASES)])
def test_api_server_and_operator_agree(kind: str, spec: dict[str, Any], reason: str | None) -> None:
    server = api_server_verdict(kind, spec)
    operator = operator_verdict(kind, spec)
    if reason is None:
        assert (server, operator) == (None, None)
    elif reason == "schema":
        # A pattern the schema enforces; the model refuses the same value with its own reason.
        assert server == {"schema"} and operator == Reason.RESOURCES_INVALID
    else:
        assert (server, operator) == ({reason}, reason)


def _emitted_rules(node: Any) -> set[str]:
    if isinstance(node, dict):
        own = {entry["rule"] for entry in node.get("x-kubernetes-validations", [])}
        return own.union(*(_emitted_rules(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_emitted_rules(v) for v in node))
    return set()


def test_every_declared_rule_is_in_a_crd_and_broken_by_a_case() -> None:
    assert set().union(*(_emitted_rules(crd(kind)) for kind in KINDS)) >= set(RULES)
    broken = set()
    for kind, spec, reason in CASES:
        if reason not in (None, "schema"):
            schema = _spec_schema(kind)
            failed = _failed_rules(schema, _with_defaults(schema, spec))
            assert {rule.reason for rule in failed} == {reason}
            broken |= {rule.rule for rule in failed}
    assert broken == set(RULES), f"rules no case breaks: {set(RULES) - broken}"


def test_every_rule_compiles_and_names_a_known_reason() -> None:
    assert len(RULES) >= 9
    for rule in RULES.values():
        _CEL.compile(rule.rule)
        assert Reason(rule.reason)


def test_tool_names_are_a_list_map_so_the_api_server_keeps_them_unique() -> None:
    tools = _spec_schema("AgentProgram")["properties"]["tools"]
    assert tools["x-kubernetes-list-type"] == "map" and tools["x-kubernetes-list-map-keys"] == ["name"]
    assert operator_verdict("AgentProgram", {**PROGRAM, "sandbox": {"image": "x"}, "tools": [TOOL, TOOL]})
