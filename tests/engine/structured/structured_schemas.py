"""The structured-output schema set: nested objects, arrays, enums, bounded numbers, required, anyOf.

Used by the tests (every output must validate) and by ``bench/structured.py`` (compile times).
``BOUNDED`` schemas have no free-length strings or numbers, so even a tiny random model closes them
within a few dozen tokens; the others need a real model (the bundled one) to finish.
"""

from __future__ import annotations

from typing import Any

_S: dict[str, Any] = {"type": "string", "maxLength": 24}
_COLOR: dict[str, Any] = {"enum": ["red", "green", "blue"]}
_SMALL_INT: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 9}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False}  # fmt: skip


BOUNDED: dict[str, dict[str, Any]] = {
    "flag": _obj({"ok": {"type": "boolean"}}),
    "enum_color": _obj({"color": _COLOR}),
    "bounded_int": _obj({"n": {"type": "integer", "minimum": 1, "maximum": 5}}),
    "int_enum": _obj({"level": {"enum": [1, 2, 3]}}),
    "const": _obj({"kind": {"const": "point"}, "x": _SMALL_INT}),
    "nested": _obj({"a": _obj({"b": _obj({"c": {"type": "boolean"}})})}),
    "enum_array": _obj(
        {"tags": {"type": "array", "items": {"enum": ["x", "y", "z"]}, "minItems": 1, "maxItems": 4}}
    ),
    "array_of_objects": _obj(
        {
            "points": {
                "type": "array",
                "items": _obj({"x": _SMALL_INT, "y": _SMALL_INT}),
                "minItems": 1,
                "maxItems": 3,
            }
        }
    ),
    "any_of": _obj({"v": {"anyOf": [{"type": "boolean"}, _COLOR, {"type": "null"}]}}),
    "any_of_objects": _obj(
        {"shape": {"anyOf": [_obj({"circle": _SMALL_INT}), _obj({"square": _SMALL_INT})]}}
    ),
    "optional_fields": _obj({"a": {"type": "boolean"}, "b": _COLOR, "c": _SMALL_INT}, required=["a"]),
    "nullable": _obj({"maybe": {"type": ["boolean", "null"]}}),
    "top_level_array": {"type": "array", "items": _COLOR, "minItems": 2, "maxItems": 2},
    "tuple_like": _obj({"pair": {"type": "array", "prefixItems": [_COLOR, _SMALL_INT], "items": False}}),
}

FREE: dict[str, dict[str, Any]] = {
    "person": _obj({"name": _S, "age": {"type": "integer", "minimum": 0, "maximum": 130}}),
    # multipleOf bounds the decimals: a small model otherwise writes 1.0000... until max_tokens
    "bounded_number": _obj({"score": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.01}}),
    "string_enum_mix": _obj({"title": _S, "status": {"enum": ["open", "closed"]}}),
    "list_of_strings": _obj({"items": {"type": "array", "items": _S, "maxItems": 3}}),
    "address": _obj({"street": _S, "city": _S, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}),
    "order": _obj(
        {
            "id": {"type": "integer", "minimum": 1, "maximum": 10000},
            "lines": {
                "type": "array",
                "items": _obj({"sku": _S, "qty": {"type": "integer", "minimum": 1, "maximum": 9}}),
                "minItems": 1,
                "maxItems": 2,
            },
        }
    ),
    "defs_ref": {
        "$defs": {"color": _COLOR},
        "type": "object",
        "properties": {"fg": {"$ref": "#/$defs/color"}, "bg": {"$ref": "#/$defs/color"}},
        "required": ["fg", "bg"],
        "additionalProperties": False,
    },
    "any_of_string_or_int": _obj({"id": {"anyOf": [_S, {"type": "integer", "minimum": 0, "maximum": 99}]}}),
}

ALL: dict[str, dict[str, Any]] = {**BOUNDED, **FREE}
