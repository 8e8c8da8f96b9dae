"""The router passes structured-output and tool-choice fields through to a real engine unchanged."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "router"))
from test_real_engines import EngineProc, config, running_engines, start_router

pytestmark = pytest.mark.integration

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
          "maximum": 9}}, "required": ["ok", "n"], "additionalProperties": False}  # fmt: skip
TOOLS: list[Any] = [{"type": "function", "function": {"name": "pick", "parameters": SCHEMA}},
                    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}]  # fmt: skip
MSGS: list[Any] = [{"role": "user", "content": "Pick one."}]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProc]:
    with running_engines(tiny_model_dir, tmp_path_factory.mktemp("engines"), count=1) as procs:
        yield procs[0]


async def test_router_passes_response_format_and_tool_choice_through(engine: EngineProc) -> None:
    served, _app = await start_router(config([engine.url]))
    try:
        client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        fmt: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}
        r = await client.chat.completions.create(model="tiny", messages=MSGS, response_format=fmt, max_tokens=64, seed=1)
        jsonschema.validate(json.loads(r.choices[0].message.content or ""), SCHEMA)
        named: Any = {"type": "function", "function": {"name": "pick"}}
        r = await client.chat.completions.create(
            model="tiny", messages=MSGS, tools=TOOLS, tool_choice=named, parallel_tool_calls=False, max_tokens=64
        )
        (call,) = r.choices[0].message.tool_calls or []
        assert call.function.name == "pick"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA)
        streamed = ""
        stream = await client.chat.completions.create(
            model="tiny", messages=MSGS, tools=TOOLS, tool_choice=named, parallel_tool_calls=False, max_tokens=64,
            stream=True,
        )  # fmt: skip
        async for chunk in stream:
            for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                streamed += tc.function.arguments or "" if tc.function else ""
        jsonschema.validate(json.loads(streamed), SCHEMA)
        with pytest.raises(openai.BadRequestError, match="dependentSchemas"):
            bad: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"dependentSchemas": {}}}}
            await client.chat.completions.create(model="tiny", messages=MSGS, response_format=bad, max_tokens=8)
    finally:
        await served.stop()
