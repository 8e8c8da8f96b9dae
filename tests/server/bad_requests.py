"""The table of bad requests (shared by the fake-engine and real-server tests)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

_ANY = object()


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: Any
    """A dict (sent as JSON), raw bytes, or None (no body)."""
    status: int
    param: Any = _ANY
    contains: str | None = None
    method: str = "POST"


def cases(model: str, max_model_len: int, max_body_bytes: int) -> list[Case]:
    chat = "/v1/chat/completions"
    cmpl = "/v1/completions"
    user = [{"role": "user", "content": "hi"}]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    return [
        Case("malformed json", cmpl, b'{"prompt": "x", ', 400, contains="JSON"),
        Case("body not an object", cmpl, b"[1, 2]", 400),
        Case("missing prompt", cmpl, {"model": model}, 400, "prompt"),
        Case("max_tokens wrong type", cmpl, {"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
        Case("max_tokens negative", cmpl, {"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        Case("max_tokens huge", cmpl, {"prompt": "x", "max_tokens": 10**9}, 400, "max_tokens", str(max_model_len)),
        Case("max_tokens float", chat, {"messages": user, "max_tokens": 1.5}, 400, "max_tokens"),
        Case("n huge", cmpl, {"prompt": "x", "n": 1000}, 400, "n"),
        Case("n zero", chat, {"messages": user, "n": 0}, 400, "n"),
        Case("template kwarg not a name", chat, {"messages": user, "chat_template_kwargs": {"": 1}}, 400,
             "messages", "variable names"),
        Case("temperature negative", chat, {"messages": user, "temperature": -1}, 400, "temperature"),
        Case("temperature string", chat, {"messages": user, "temperature": "hot"}, 400, "temperature"),
        Case("top_p zero", chat, {"messages": user, "top_p": 0}, 400, "top_p"),
        Case("presence_penalty out of range", chat, {"messages": user, "presence_penalty": 5}, 400, "presence_penalty"),
        Case("seed not an integer", chat, {"messages": user, "seed": 1.5}, 400, "seed"),
        Case("empty messages", chat, {"messages": []}, 400, "messages"),
        Case("messages not a list", chat, {"messages": "hi"}, 400, "messages"),
        Case("invalid role", chat, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0"),
        Case("content wrong type", chat, {"messages": [{"role": "user", "content": 5}]}, 400),
        Case("image content part", chat, {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400),
        Case("assistant without content", chat, {"messages": [*user, {"role": "assistant"}]}, 400),
        Case("tool message without id", chat, {"messages": [*user, {"role": "tool", "content": "x"}]}, 400),
        Case("prompt too long", cmpl, {"prompt": "a " * (max_model_len + 10), "max_tokens": 1}, 400, "prompt",
             str(max_model_len)),
        Case("chat too long", chat, {"messages": [{"role": "user", "content": "a " * (max_model_len + 10)}]}, 400,
             "messages", str(max_model_len)),
        Case("empty prompt", cmpl, {"prompt": "", "max_tokens": 1}, 400),
        Case("empty token prompt", cmpl, {"prompt": [[]]}, 400, "prompt"),
        Case("token id out of vocabulary", cmpl, {"prompt": [10**8], "max_tokens": 1}, 400),
        Case("oversized body", cmpl, {"prompt": "x" * (max_body_bytes + 1)}, 413),
        Case("unknown model", chat, {"model": "no-such-model", "messages": user}, 404, "model"),
        Case("bad tool schema type", chat, {"messages": user, "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}, 400),
        Case("tool without function", chat, {"messages": user, "tools": [{"type": "function"}]}, 400),
        Case("bad tool name", chat, {"messages": user, "tools": [
            {"type": "function", "function": {"name": "has space"}}]}, 400),
        Case("tool_choice unknown function", chat, {"messages": user, "tools": [tool], "tool_choice": {
            "type": "function", "function": {"name": "g"}}}, 400),
        Case("too many stop strings", cmpl, {"prompt": "x", "stop": [str(i) for i in range(20)]}, 400, "stop"),
        Case("empty stop string", cmpl, {"prompt": "x", "stop": [""]}, 400, "stop"),
        Case("completion logprobs too many", cmpl, {"prompt": "x", "logprobs": 50}, 400, "logprobs"),
        Case("top_logprobs without logprobs", chat, {"messages": user, "top_logprobs": 2}, 400),
        Case("unknown field", chat, {"messages": user, "frobnicate": True}, 400, "frobnicate"),
        Case("stream_options without stream", chat, {"messages": user, "stream_options": {"include_usage": True}}, 400),
        Case("logit_bias unsupported", chat, {"messages": user, "logit_bias": {"1": 5}}, 400, "logit_bias"),
        Case("retention without program", chat, {"messages": user, "program_retention_s": 10}, 400),
        Case("negative retention", chat, {"messages": user, "program_id": "p", "program_retention_s": -1}, 400),
        Case("bad program id", chat, {"messages": user, "program_id": "has space"}, 400, "program_id"),
        Case("unknown route", "/v1/nothing", {}, 404),
        Case("wrong method", cmpl, None, 405, method="GET"),
        Case("tokenize needs one input", "/tokenize", {}, 400),
    ]


async def send(client: httpx.AsyncClient, case: Case) -> httpx.Response:
    if case.body is None:
        return await client.request(case.method, case.path)
    content = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
    return await client.request(case.method, case.path, content=content,
                                headers={"content-type": "application/json"})


def check(case: Case, response: httpx.Response) -> None:
    assert response.status_code == case.status, f"{case.name}: {response.status_code} {response.text[:300]}"
    body = response.json()
    assert set(body) == {"error"}, f"{case.name}: {body}"
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, f"{case.name}: {error}"
    assert isinstance(error["message"], str) and error["message"], case.name
    assert isinstance(error["type"], str) and error["type"], case.name
    if case.param is not _ANY:
        assert error["param"] == case.param, f"{case.name}: param {error['param']!r} != {case.param!r}"
    if case.contains:
        assert case.contains in error["message"], f"{case.name}: {error['message']}"
