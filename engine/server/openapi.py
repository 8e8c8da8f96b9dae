"""The request bodies in the app's OpenAPI document.

The handlers parse their JSON bodies themselves (strict, one pass, OpenAI-shaped errors), so
FastAPI cannot see them; this puts the pydantic request models back into ``/openapi.json``
for clients, generators and the fuzz tier (schemathesis).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

_REF = "#/components/schemas/{model}"


def describe_request_bodies(app: FastAPI, bodies: Mapping[tuple[str, str], type[BaseModel]]) -> None:
    """Declare ``{(method, path): model}`` as the JSON request bodies of those operations."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        _, defs = models_json_schema([(m, "validation") for m in bodies.values()], ref_template=_REF)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        for (method, path), model in bodies.items():
            operation = schema["paths"][path][method.lower()]
            ref = {"$ref": _REF.format(model=model.__name__)}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
