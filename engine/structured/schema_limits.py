"""Bounds on a JSON schema, checked before compiling it (a 400 names the one exceeded).

llguidance enforces its own resource limits too; these give clear messages for the
common ways a schema gets too big: deep nesting, huge enums, a huge document.
Recursive ``$ref`` cycles are fine (the grammar is recursive too): a reference is not
followed again while it is being expanded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shoal.engine.structured.errors import GrammarError

MAX_SCHEMA_BYTES = 256 * 1024
"""Largest JSON schema (as JSON text) a request may send."""
MAX_DEPTH = 32
"""Deepest nesting of subschemas, counted through local ``$ref`` references."""
MAX_ENUM_VALUES = 1024
"""Most values in one ``enum``."""


def check_schema(schema: Any) -> None:
    """Raise :class:`GrammarError` when ``schema`` passes a limit above (or is not a schema)."""
    if not isinstance(schema, (Mapping, bool)):
        raise GrammarError(f"a JSON schema must be an object or a boolean, got {type(schema).__name__}")
    try:
        size = len(json.dumps(schema))
    except RecursionError:
        raise GrammarError(f"the JSON schema nests deeper than {MAX_DEPTH} levels") from None
    if size > MAX_SCHEMA_BYTES:
        raise GrammarError(f"the JSON schema is {size} bytes; at most {MAX_SCHEMA_BYTES} are supported")
    _walk(schema, schema, 0, frozenset())


def _walk(node: Any, root: Any, depth: int, expanding: frozenset[str]) -> None:
    if isinstance(node, list):
        for item in node:  # a list of subschemas is one level with its keyword; nested lists add levels
            _walk(item, root, depth + isinstance(item, list), expanding)
        return
    if not isinstance(node, Mapping):
        return
    if depth > MAX_DEPTH:
        raise GrammarError(f"the JSON schema nests deeper than {MAX_DEPTH} levels")
    enum = node.get("enum")
    if isinstance(enum, list) and len(enum) > MAX_ENUM_VALUES:
        raise GrammarError(f"an enum has {len(enum)} values; at most {MAX_ENUM_VALUES} are supported")
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and ref not in expanding:
        _walk(_resolve(root, ref), root, depth + 1, expanding | {ref})
    for key, value in node.items():
        if key in ("enum", "const", "default", "examples", "$ref"):
            continue  # data, not subschemas
        if key in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"):
            if isinstance(value, Mapping):
                for sub in value.values():
                    _walk(sub, root, depth + 1, expanding)
            continue
        _walk(value, root, depth + 1, expanding)


def _resolve(root: Any, ref: str) -> Any:
    node = root
    for part in ref.lstrip("#").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise GrammarError(f"the JSON schema's $ref {ref!r} points nowhere")
    return node
