"""Pydantic JSON Schema -> Kubernetes structural openAPIV3Schema."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from shoal.crds.cel import CrdJsonSchema

_DROP = {"title"}


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of ``model`` (inlined refs, no nulls, OpenAPI 3.0 exclusive bounds)."""
    raw = model.model_json_schema(
        by_alias=True, mode="validation", ref_template="#/$defs/{model}", schema_generator=CrdJsonSchema
    )
    defs = raw.pop("$defs", {})
    # Deep-copied so no two places share a node (YAML would write anchors for them).
    return json.loads(json.dumps(_convert(raw, defs)))


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = dict(defs[ref.rsplit("/", 1)[-1]])
    # Sibling keys of a $ref (description, default) override the definition's.
    target.update({k: v for k, v in node.items() if k != "$ref"})
    return target


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, defs)
    if "anyOf" in node:
        variants = [_resolve(v, defs) for v in node["anyOf"]]
        non_null = [v for v in variants if v.get("type") != "null"]
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        if outer.get("default", 0) is None:
            del outer["default"]
        if node.get("x-kubernetes-int-or-string"):
            return {k: v for k, v in outer.items() if k not in _DROP}
        if len(non_null) != 1:
            raise ValueError(f"a CRD schema cannot express anyOf {variants!r}")
        merged = {**non_null[0], **outer}
        return _convert(merged, defs)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields instead
        if key == "additionalProperties" and (value is True or value == {}):
            out["x-kubernetes-preserve-unknown-fields"] = True
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "description":
            out[key] = " ".join(str(value).replace("``", "`").split())
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = _json_type(out["enum"][0])
    # A stable, readable key order: what it is first, then its constraints.
    head = [k for k in ("description", "type") if k in out]
    return {k: out[k] for k in head + sorted(k for k in out if k not in head)}


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"
