"""From a chat request to its output constraint: ``response_format``, ``tool_choice``, ``parallel_tool_calls``.

- ``response_format`` ``json_object`` / ``json_schema``: the answer is JSON (matching the schema);
- ``tool_choice`` ``required`` / named: the answer is tool calls (of that tool), one when
  ``parallel_tool_calls`` is false;
- ``tool_choice`` ``auto`` with a JSON ``response_format``: tool calls or the JSON answer;
- ``tool_choice`` ``auto`` without one, ``parallel_tool_calls`` false: free text, but
  generation stops after the first call (its close tag is a stop string).

The grammar is compiled here, in the server's tokenizer threads, so a schema the
library cannot compile is a 400 naming the problem and the engine thread finds it cached.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from shoal.engine.sampling_params import SamplingParams, StructuredOutput
from shoal.engine.server.errors import bad_request
from shoal.engine.server.protocol import ChatCompletionRequest
from shoal.engine.server.tool_call_grammar import calls_or_answer, forced_tool_calls
from shoal.engine.server.tool_calls import CLOSE_TAG
from shoal.engine.structured import GrammarError
from shoal.engine.structured.schema_limits import check_schema


def _answer_schema(req: ChatCompletionRequest) -> dict[str, Any] | None:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object" or fmt.json_schema is None or fmt.json_schema.schema_ is None:
        return {"type": "object"}
    return fmt.json_schema.schema_


def structured_output(
    req: ChatCompletionRequest, tools: list[dict[str, Any]] | None
) -> StructuredOutput | None:
    """The constraint of ``req`` (``tools`` as the template renders them, after ``tool_choice``)."""
    answer = _answer_schema(req)
    parallel = req.parallel_tool_calls is not False
    forced = req.tool_choice == "required" or (
        req.tool_choice is not None and not isinstance(req.tool_choice, str)
    )
    try:
        if forced:
            if answer is not None:
                raise bad_request(
                    "response_format cannot be combined with a required or named tool_choice (the answer is the call)",
                    param="response_format",
                )
            return forced_tool_calls(tools or [], parallel)
        if tools and answer is not None:
            return calls_or_answer(tools, parallel, answer)
        if answer is None:
            return None
        if req.response_format is not None and req.response_format.type == "json_object":
            return StructuredOutput("json_object")
        check_schema(answer)
        return StructuredOutput("json_schema", json.dumps(answer))
    except GrammarError as exc:
        raise bad_request(str(exc), param="response_format" if answer is not None else "tools") from exc


def constrain(
    params: SamplingParams, req: ChatCompletionRequest, spec: StructuredOutput | None, tools: Any
) -> SamplingParams:
    """``params`` with the constraint and, for auto calls without parallel calls, the stop after one call."""
    if spec is None and tools and req.parallel_tool_calls is False:
        return dataclasses.replace(params, stop=(*params.stop, CLOSE_TAG))
    if spec is None:
        return params
    try:
        return dataclasses.replace(params, structured=spec)
    except ValueError as exc:
        raise bad_request(str(exc), param="min_tokens" if params.min_tokens else "ignore_eos") from exc


def compile_grammar(engine: Any, spec: StructuredOutput, param: str) -> None:
    """Compile ``spec`` with the engine's grammar compiler (cached); 400 when it cannot be compiled."""
    compiler = getattr(engine, "grammars", None)
    if compiler is None:
        raise bad_request("this engine does not support structured outputs", param=param)
    try:
        compiler.compile(spec)
    except GrammarError as exc:
        raise bad_request(str(exc), param=param) from exc
