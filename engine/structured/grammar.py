"""A :class:`StructuredOutput` -> llguidance grammar text (no tokenizer needed)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import llguidance

from shoal.engine.sampling_params import StructuredOutput
from shoal.engine.structured.errors import GrammarError
from shoal.engine.structured.schema_limits import check_schema

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

JSON_FORMAT: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""One-line JSON with a space after ``,`` and ``:``. Free whitespace lets small models pad
forever (never closing the object within max_tokens); fixed separators keep outputs short."""


def grammar_text(spec: StructuredOutput) -> str:
    """The llguidance grammar (JSON text) for ``spec``; raises :class:`GrammarError` on bad input."""
    if spec.kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_FORMAT)
    if spec.kind == "json_schema":
        try:
            schema = json.loads(spec.value)
        except json.JSONDecodeError as exc:
            raise GrammarError(f"the JSON schema is not valid JSON: {exc}") from exc
        check_schema(schema)
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_FORMAT)
        except ValueError as exc:
            raise GrammarError(f"invalid JSON schema: {exc}") from exc
    if spec.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(spec.value)
    return llguidance.LLMatcher.grammar_from_lark(spec.value)
