"""Acceptance: the whole schema set on the bundled SmolLM2-135M, sampling on, through the openai client.

Every constrained output must parse and validate; forced tool calls must name the right tool
with schema-valid arguments. A real model closes free strings, so the full set runs here (slow tier).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from server_helpers import engine_server

sys.path.insert(0, str(Path(__file__).parents[1] / "engine" / "structured"))
from structured_schemas import ALL

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "Reply with a JSON value for a small example record."
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"], "additionalProperties": False}  # fmt: skip
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather in a city", "parameters": CITY},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Time in a city", "parameters": CITY},
    },
]


@pytest.fixture(scope="module")
def client(bundled_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    args = ["--max-num-seqs", "16", "--served-model-name", "smol", "--log-level", "warning"]
    with engine_server(bundled_model, *args, log_dir=tmp_path_factory.mktemp("logs")) as proc:
        yield openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_schema_of_the_set_validates(client: openai.OpenAI, seed: int) -> None:
    assert len(ALL) >= 20
    from concurrent.futures import ThreadPoolExecutor

    def one(item: tuple[str, dict[str, Any]]) -> tuple[str, Any]:
        name, schema = item
        fmt: Any = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
        r = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": PROMPT}], response_format=fmt, temperature=0.8,
            max_tokens=256, seed=seed,
        )  # fmt: skip
        return name, r.choices[0]

    with ThreadPoolExecutor(8) as pool:
        for name, choice in pool.map(one, ALL.items()):
            assert choice.finish_reason == "stop", (name, choice.message.content)
            jsonschema.validate(json.loads(choice.message.content or ""), ALL[name])


def test_json_object(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": PROMPT}], response_format={"type": "json_object"},
        temperature=0.7, max_tokens=256, seed=2,
    )  # fmt: skip
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_calls(client: openai.OpenAI, choice: Any) -> None:
    msgs: list[Any] = [{"role": "user", "content": "What time is it in Paris?"}]
    r = client.chat.completions.create(
        model="smol", messages=msgs, tools=TOOLS, tool_choice=choice, temperature=0.7, max_tokens=256, seed=3,
        parallel_tool_calls=False,  # allowed more, SmolLM2-135M repeats its call until max_tokens
    )  # fmt: skip
    out = r.choices[0]
    assert out.finish_reason == "tool_calls" and len(out.message.tool_calls or []) == 1
    for call in out.message.tool_calls:
        assert call.function.name in (
            {"get_time"} if isinstance(choice, dict) else {"get_weather", "get_time"}
        )
        jsonschema.validate(json.loads(call.function.arguments), CITY)
