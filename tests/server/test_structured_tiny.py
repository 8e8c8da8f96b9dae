"""Structured outputs and enforced tool calls through the official openai client, on a real engine (tiny model).

A tiny random model writes noise, so these use schemas it can close (enums, booleans, bounded
integers, no free strings): whatever it samples, the grammar must make it valid.
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
from server_helpers import ServerProcess, engine_server

sys.path.insert(0, str(Path(__file__).parents[1] / "engine" / "structured"))
from structured_schemas import BOUNDED

pytestmark = pytest.mark.integration

WEATHER = {"type": "object", "properties": {"unit": {"enum": ["C", "F"]}, "days": {"type": "integer", "minimum": 1,
           "maximum": 3}}, "required": ["unit", "days"], "additionalProperties": False}  # fmt: skip
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
       "b": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a", "b"], "additionalProperties": False}  # fmt: skip
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "parameters": ADD}},
]
SCHEMA_OF = {"get_weather": WEATHER, "add": ADD}
MSGS: list[Any] = [{"role": "user", "content": "Weather in Paris, and 2+3?"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--num-kv-blocks", "128", "--max-num-seqs", "8", "--num-threads", "1", "--served-model-name", "tiny",
            "--log-level", "warning"]  # fmt: skip
    with engine_server(str(tiny_model_dir), *args, log_dir=tmp_path_factory.mktemp("logs")) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def json_schema_format(name: str, schema: dict[str, Any]) -> Any:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def test_every_bounded_schema_validates_with_sampling(client: openai.OpenAI) -> None:
    for name, schema in BOUNDED.items():
        r = client.chat.completions.create(
            model="tiny", messages=MSGS, response_format=json_schema_format(name, schema), n=2, temperature=1.0,
            max_tokens=200, seed=len(name),
        )  # fmt: skip
        for choice in r.choices:
            assert choice.finish_reason == "stop", (name, choice.message.content)
            jsonschema.validate(json.loads(choice.message.content or ""), schema)


def check_calls(calls: Any, allowed: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA_OF[call.function.name])


def test_tool_choice_required_and_named(client: openai.OpenAI) -> None:
    for seed in range(4):
        r = client.chat.completions.create(
            model="tiny", messages=MSGS, tools=TOOLS, tool_choice="required", max_tokens=200, seed=seed
        )
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and not choice.message.content
        check_calls(choice.message.tool_calls, {"get_weather", "add"})
        named = client.chat.completions.create(
            model="tiny", messages=MSGS, tools=TOOLS, max_tokens=200, seed=seed,
            tool_choice={"type": "function", "function": {"name": "add"}},
        )  # fmt: skip
        check_calls(named.choices[0].message.tool_calls, {"add"})


def test_parallel_tool_calls_false_gives_one_call(client: openai.OpenAI) -> None:
    for seed in range(4):
        r = client.chat.completions.create(
            model="tiny", messages=MSGS, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
            max_tokens=200, seed=seed,
        )  # fmt: skip
        assert len(r.choices[0].message.tool_calls or []) == 1


def test_streamed_tool_calls_reassemble_to_the_non_streamed_result(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "tiny", "messages": MSGS, "tools": TOOLS, "tool_choice": "required",
                              "max_tokens": 200, "seed": 3, "temperature": 1.0}  # fmt: skip
    full = client.chat.completions.create(**kwargs).choices[0].message.tool_calls or []
    calls: dict[int, dict[str, Any]] = {}
    first_deltas: list[Any] = []
    finish = None
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for tc in choice.delta.tool_calls or []:
                if tc.index not in calls:
                    first_deltas.append(tc)
                    calls[tc.index] = {"name": tc.function.name, "arguments": ""}
                else:
                    assert tc.id is None and tc.function.name is None
                calls[tc.index]["arguments"] += tc.function.arguments or ""
    assert finish == "tool_calls"
    assert all(d.id and d.type == "function" and d.function.arguments == "" for d in first_deltas)
    assert [(c.function.name, c.function.arguments) for c in full] == [
        (calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)
    ]


def test_mixed_batch_of_constrained_and_free_requests(client: openai.OpenAI) -> None:
    from concurrent.futures import ThreadPoolExecutor

    schema = BOUNDED["array_of_objects"]

    def one(i: int) -> Any:
        fmt = json_schema_format("points", schema) if i % 2 else {"type": "text"}
        return client.chat.completions.create(
            model="tiny", messages=MSGS, response_format=fmt, max_tokens=200, seed=i
        )

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    for i, r in enumerate(results):
        if i % 2:
            jsonschema.validate(json.loads(r.choices[0].message.content or ""), schema)


@pytest.mark.parametrize(
    "response_format, words",
    [
        (json_schema_format("x", {"type": "object", "dependentSchemas": {"a": {}}}), "dependentSchemas"),
        (
            json_schema_format("x", {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
            "$ref",
        ),
        (json_schema_format("enum", {"enum": list(range(5000))}), "5000 values"),
        (json_schema_format("x", {"type": "string", "pattern": "(unclosed"}), "unclosed group"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "needs json_schema.schema"),
        ({"type": "json_object", "json_schema": {"name": "x", "schema": {}}}, "takes no json_schema"),
    ],
)
def test_bad_schemas_are_400s_naming_the_problem(
    client: openai.OpenAI, response_format: Any, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny", messages=MSGS, response_format=response_format, max_tokens=5
        )
    assert words in str(info.value)


def test_deep_nesting_is_a_400(client: openai.OpenAI) -> None:
    schema: dict[str, Any] = {"type": "boolean"}
    for _ in range(40):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    with pytest.raises(openai.BadRequestError, match="nests deeper than 32"):
        client.chat.completions.create(
            model="tiny", messages=MSGS, response_format=json_schema_format("d", schema)
        )
    recursive = {"$defs": {"node": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/node"},
                 {"type": "null"}]}}, "required": ["next"]}}, "$ref": "#/$defs/node"}  # fmt: skip
    r = client.chat.completions.create(
        model="tiny",
        messages=MSGS,
        response_format=json_schema_format("r", recursive),
        max_tokens=200,
        seed=1,
    )
    if (
        r.choices[0].finish_reason == "stop"
    ):  # recursion itself is fine; a random model may nest past max_tokens
        jsonschema.validate(json.loads(r.choices[0].message.content or ""), recursive)


def test_conflicting_and_unsupported_combinations_are_400s(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="cannot be combined with a required"):
        client.chat.completions.create(model="tiny", messages=MSGS, tools=TOOLS, tool_choice="required",
                                       response_format={"type": "json_object"})  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="min_tokens"):
        client.chat.completions.create(model="tiny", messages=MSGS, response_format={"type": "json_object"},
                                       extra_body={"min_tokens": 2})  # fmt: skip
