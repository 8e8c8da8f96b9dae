"""The grammar that forces tool calls (``tool_choice`` required or named), in the parser's format.

It produces exactly what :mod:`shoal.engine.server.tool_calls` reads back: one or more
``<tool_call>\\n{"name": "<tool>", "arguments": <object matching its parameters>}\\n</tool_call>``
blocks (one when ``parallel_tool_calls`` is false), name first so streaming can send it
early, and nothing else. With ``tool_choice: "auto"`` and a JSON ``response_format`` the
model may call tools or answer in the format, so the grammar is the union of both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from shoal.engine.sampling_params import StructuredOutput
from shoal.engine.server.tool_calls import CLOSE_TAG, OPEN_TAG
from shoal.engine.structured.grammar import JSON_FORMAT
from shoal.engine.structured.schema_limits import check_schema


def _call_schema(function: Mapping[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The call object of one tool; its parameters schema moves under ``defs`` (refs rewritten)."""
    parameters = function.get("parameters") or {"type": "object"}
    check_schema(parameters)
    key = f"tool_{len(defs)}"
    defs[key] = _relocate(parameters, f"#/$defs/{key}")
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": {"$ref": f"#/$defs/{key}"}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _relocate(node: Any, prefix: str) -> Any:
    """``node`` with its local ``$ref`` s ("#/...") pointing into ``prefix`` (where it now lives)."""
    if isinstance(node, list):
        return [_relocate(item, prefix) for item in node]
    if not isinstance(node, Mapping):
        return node
    out = {
        k: _relocate(v, prefix) for k, v in node.items() if k not in ("enum", "const", "default", "examples")
    }
    out.update({k: node[k] for k in ("enum", "const", "default", "examples") if k in node})
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        out["$ref"] = prefix + ref[1:]
    return out


def _json(schema: Mapping[str, Any]) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": JSON_FORMAT})


def tool_call_rules(tools: Sequence[Mapping[str, Any]], parallel: bool) -> str:
    """Lark rules defining ``calls``: the tool-call blocks for ``tools`` (OpenAI tool objects)."""
    defs: dict[str, Any] = {}
    bodies = [_call_schema(t["function"], defs) for t in tools]
    body = {**(bodies[0] if len(bodies) == 1 else {"anyOf": bodies}), "$defs": defs}
    repeat = ' ("\\n" call)*' if parallel else ""
    return (
        f"calls: call{repeat}\n"
        f"call: {json.dumps(OPEN_TAG + chr(10))} call_body {json.dumps(chr(10) + CLOSE_TAG)}\n"
        f"call_body: {_json(body)}\n"
    )


def forced_tool_calls(tools: Sequence[Mapping[str, Any]], parallel: bool) -> StructuredOutput:
    """Output must be calls of ``tools`` (already narrowed to the named one for a named choice)."""
    return StructuredOutput("lark", "start: calls\n" + tool_call_rules(tools, parallel))


def calls_or_answer(
    tools: Sequence[Mapping[str, Any]], parallel: bool, answer_schema: Mapping[str, Any]
) -> StructuredOutput:
    """Output is either calls of ``tools`` or a JSON answer matching ``answer_schema``."""
    check_schema(answer_schema)
    rules = tool_call_rules(tools, parallel)
    return StructuredOutput("lark", f"start: calls | answer\n{rules}answer: {_json(answer_schema)}\n")
