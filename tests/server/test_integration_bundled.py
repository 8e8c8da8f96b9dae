"""The bundled SmolLM2-135M behind a real server process, through the official openai client (slow tier)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from server_helpers import ServerProcess, engine_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TOOLS: list[Any] = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
# One worked example is enough for the 135M instruct model to answer in the Hermes format (greedy).
FEW_SHOT: list[Any] = [
    {"role": "system", "content": 'You call tools. To call a tool, answer ONLY with '
                                  '<tool_call>{"name": NAME, "arguments": ARGS}</tool_call>.'},
    {"role": "user", "content": "What is the weather in Rome?"},
    {"role": "assistant", "content": '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'},
    {"role": "user", "content": "What is the weather in Paris?"},
]  # fmt: skip


@pytest.fixture(scope="module")
def server(bundled_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--max-model-len", "2048", "--num-kv-blocks", "256", "--log-level", "warning"]
    with engine_server(bundled_model, *args, log_dir=tmp_path_factory.mktemp("logs"), ready_timeout=180) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def test_chat_answers_sensibly(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24,
        temperature=0,
    )  # fmt: skip
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.choices[0].finish_reason == "stop"


def test_completions_stop_and_logprobs(client: openai.OpenAI, model: str) -> None:
    r = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, logprobs=2)
    text = r.choices[0].text
    assert text.startswith(" 5")
    lp = r.choices[0].logprobs
    assert lp is not None and len(lp.tokens or []) == r.usage.completion_tokens  # type: ignore[union-attr]
    stopped = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[" 7"])
    assert stopped.choices[0].text == text[: text.index(" 7")]
    assert stopped.choices[0].finish_reason == "stop"


def test_seeded_n_and_stream_equals_non_stream(client: openai.OpenAI, model: str) -> None:
    kwargs: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Write a haiku about the sea."}],
                              "max_tokens": 20, "temperature": 0.9, "seed": 1234}  # fmt: skip
    full = client.chat.completions.create(**kwargs, n=2)
    assert len(full.choices) == 2
    again = client.chat.completions.create(**kwargs, n=2)
    assert [c.message.content for c in again.choices] == [c.message.content for c in full.choices]
    single = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == single.choices[0].message.content


def test_tools_round_trip(client: openai.OpenAI, model: str) -> None:
    first = client.chat.completions.create(model=model, messages=FEW_SHOT, tools=TOOLS, max_tokens=40, temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert not choice.message.content
    # Stream: the tags never show up as content.
    chunks = list(client.chat.completions.create(model=model, messages=FEW_SHOT, tools=TOOLS, max_tokens=40,
                                                 temperature=0, stream=True))  # fmt: skip
    assert "<tool_call>" not in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    streamed = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    # OpenAI's shape: the call's id and name first, then argument deltas of the same index.
    assert [tc.function.name for tc in streamed if tc.function and tc.function.name] == ["get_weather"]
    assert {tc.index for tc in streamed} == {0}
    arguments = "".join(tc.function.arguments or "" for tc in streamed if tc.function)
    assert json.loads(arguments) == {"city": "Paris"}
    # Send the result back.
    messages = [*FEW_SHOT, choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."}]  # fmt: skip
    final = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, max_tokens=24, temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_health_and_model_card(server: ServerProcess, model: str) -> None:
    import httpx

    assert httpx.get(server.url + "/health").status_code == 200
    card = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert card["id"] == model and card["max_model_len"] == 2048
    assert Path(card["root"]).suffix == ".gguf" or card["root"].startswith("bundled:")
