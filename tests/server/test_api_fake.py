"""OpenAI API behaviour of the server, over ASGI against the fake engine (fast)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from server_fakes import FakeEngine, default_script


def sse_events(body: str) -> list[Any]:
    """Parsed ``data:`` payloads of an SSE body; the final ``[DONE]`` stays a string."""
    events = [line[len("data: ") :] for line in body.split("\n\n") if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(path, json=body)


async def test_completion_non_streamed(make_client: Any) -> None:
    client, _, _ = await make_client()
    r = await post(client, "/v1/completions", {"model": "fake-model", "prompt": "Hello", "max_tokens": 100,
                                               "temperature": 0})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == default_script("Hello", 0, None)
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == 5
    assert usage["completion_tokens"] == len(default_script("Hello", 0, None)) + 1  # + EOS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_completion_stream_equals_non_stream(make_client: Any) -> None:
    client, _, _ = await make_client()
    req = {"prompt": "Once upon", "max_tokens": 9, "seed": 3, "n": 2}
    full = (await post(client, "/v1/completions", req)).json()
    r = await post(client, "/v1/completions", {**req, "stream": True, "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for e in events[:-2]:
        assert e["usage"] is None
        for c in e["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
            if c["finish_reason"]:
                reasons[c["index"]] = c["finish_reason"]
    usage = events[-2]["usage"]
    assert events[-2]["choices"] == []
    assert usage["prompt_tokens_details"] == {"cached_tokens": 8}  # the second run hit the prefix cache
    assert {**usage, "prompt_tokens_details": None} == {**full["usage"], "prompt_tokens_details": None}
    assert texts == {c["index"]: c["text"] for c in full["choices"]}
    assert reasons == {0: "length", 1: "length"}
    assert texts[0] != texts[1]


async def test_multiple_prompts_and_token_prompts(make_client: Any) -> None:
    client, _, engine = await make_client()
    r = await post(client, "/v1/completions", {"prompt": ["ab", "abcd"], "n": 2, "max_tokens": 3})
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["prompt_tokens"] == 6
    r = await post(client, "/v1/completions", {"prompt": [104, 105], "max_tokens": 2, "echo": True})
    assert r.json()["choices"][0]["text"].startswith("hi")
    assert engine.added[-1][2]["prompt_token_ids"] == [104, 105]


async def test_stop_and_seed(make_client: Any) -> None:
    client, _, _ = await make_client()
    target = default_script("xyz", 0, 5)
    stop = target[4:6]
    r = await post(client, "/v1/completions", {"prompt": "xyz", "seed": 5, "stop": [stop], "max_tokens": 50})
    choice = r.json()["choices"][0]
    assert choice["text"] == target[: target.index(stop)]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    r2 = await post(client, "/v1/completions", {"prompt": "xyz", "seed": 6, "max_tokens": 50})
    assert r2.json()["choices"][0]["text"] != target


async def test_completion_logprobs(make_client: Any) -> None:
    client, _, _ = await make_client()
    r = await post(client, "/v1/completions", {"prompt": "q", "max_tokens": 4, "logprobs": 2})
    lp = r.json()["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert lp["token_logprobs"][0] == -0.25
    assert all(len(top) == 2 for top in lp["top_logprobs"])
    assert lp["text_offset"][:2] == [0, len(lp["tokens"][0])]


async def test_chat_non_streamed_and_streamed(make_client: Any) -> None:
    client, _, engine = await make_client()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]},
    ]
    r = await post(client, "/v1/chat/completions", {"messages": messages, "max_completion_tokens": 20, "seed": 1})
    body = r.json()
    assert r.status_code == 200, body
    assert body["object"] == "chat.completion"
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant" and msg["content"] and msg["tool_calls"] == []
    prompt_text = engine.tokenizer.decode(engine.added[-1][2]["prompt_token_ids"])
    assert "<user>hi\nthere" in prompt_text and prompt_text.endswith("<assistant>")
    r = await post(client, "/v1/chat/completions", {"messages": messages, "max_completion_tokens": 20, "seed": 1,
                                                    "stream": True})  # fmt: skip
    events = sse_events(r.text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-1])
    assert content == msg["content"]
    assert events[-2]["choices"][0]["finish_reason"] == body["choices"][0]["finish_reason"]
    assert all("usage" not in e for e in events[:-1])


async def test_chat_logprobs(make_client: Any) -> None:
    client, _, _ = await make_client()
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "logprobs": True, "top_logprobs": 2}
    content = (await post(client, "/v1/chat/completions", body)).json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    assert content[0]["logprob"] == -0.25 and len(content[0]["top_logprobs"]) == 2
    assert content[0]["bytes"] == list(content[0]["token"].encode())
    r = await post(client, "/v1/chat/completions", {**body, "stream": True})
    streamed = [t for e in sse_events(r.text)[:-1] for c in e["choices"] if c["logprobs"] for t in c["logprobs"]["content"]]
    assert streamed == content


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip


async def test_tool_calls_round_trip(make_client: Any) -> None:
    client, _, engine = await make_client()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "CALL_TOOL please"}]
    r = await post(client, "/v1/chat/completions", {"messages": messages, "tools": TOOLS, "max_tokens": 200})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert call["id"].startswith("call_")
    assert "get_weather" in engine.tokenizer.decode(engine.added[-1][2]["prompt_token_ids"])
    # Streamed: no tag leaks into content; the call's id and name first, then its argument text.
    r = await post(client, "/v1/chat/completions", {"messages": messages, "tools": TOOLS, "max_tokens": 200,
                                                    "stream": True})  # fmt: skip
    events = sse_events(r.text)[:-1]
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert "<tool_call>" not in content and content == ""
    deltas = [tc for e in events for tc in e["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""} and deltas[0]["index"] == 0
    assert [d["function"].get("name") for d in deltas[1:]] == [None] * (len(deltas) - 1)
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"city": "Paris"}'
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # Round trip: send the call and its result back.
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21C"},
    ]
    r = await post(client, "/v1/chat/completions", {"messages": messages, "tools": TOOLS, "max_tokens": 5})
    assert r.status_code == 200, r.text
    prompt = engine.tokenizer.decode(engine.added[-1][2]["prompt_token_ids"])
    assert '<call get_weather {"city": "Paris"}>' in prompt and "<tool>sunny, 21C" in prompt


async def test_tool_calls_not_parsed_without_tools(make_client: Any) -> None:
    client, _, _ = await make_client()
    r = await post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "CALL_TOOL"}],
                                                    "max_tokens": 200})  # fmt: skip
    choice = r.json()["choices"][0]
    assert choice["message"]["content"].startswith("<tool_call>") and choice["finish_reason"] == "stop"
    r = await post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "CALL_TOOL"}],
                                                    "tools": TOOLS, "tool_choice": "none", "max_tokens": 200})  # fmt: skip
    assert r.json()["choices"][0]["message"]["tool_calls"] == []


async def test_program_id_reaches_engine_and_release(make_client: Any) -> None:
    client, _, engine = await make_client()
    msgs = [{"role": "user", "content": "hello program"}]
    await post(client, "/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "program_id": "p-1",
                                                "program_retention_s": 30})  # fmt: skip
    assert engine.added[-1][2] | {"prompt_token_ids": None} == {
        "priority": 0, "program_id": "p-1", "retention_s": 30, "prompt_token_ids": None,
        "tenant": "", "cache_salt": ""}  # fmt: skip
    await post(client, "/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "priority": 3,
                                                "extra_body": {"program_id": "p-2", "program_retention_s": 5.5}})  # fmt: skip
    assert engine.added[-1][2]["program_id"] == "p-2" and engine.added[-1][2]["retention_s"] == 5.5
    assert engine.added[-1][2]["priority"] == 3
    r = await client.post("/v1/programs/p-1/release")
    assert r.json()["program_id"] == "p-1" and r.json()["released_blocks"] > 0
    assert (await client.post("/v1/programs/p-1/release")).json()["released_blocks"] == 0
    # Program ids may hold '/' (the id rule allows it); the router sends them percent-encoded.
    await post(client, "/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "program_id": "team/run:7",
                                                "program_retention_s": 30})  # fmt: skip
    r = await client.post("/v1/programs/team%2Frun:7/release")
    assert r.status_code == 200 and r.json()["program_id"] == "team/run:7" and r.json()["released_blocks"] > 0


async def test_models_health_tokenize_and_shoal_endpoints(make_client: Any) -> None:
    client, _, engine = await make_client()
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "fake-model"
    assert models["data"][0]["max_model_len"] == engine.max_model_len
    assert (await client.get("/health")).status_code == 200
    tok = (await post(client, "/tokenize", {"prompt": "abc"})).json()
    assert tok == {"count": 3, "max_model_len": engine.max_model_len, "tokens": [97, 98, 99]}
    tok = (await post(client, "/tokenize", {"messages": [{"role": "user", "content": "a"}]})).json()
    assert tok["count"] == len("<user>a\n<assistant>")
    assert (await post(client, "/detokenize", {"tokens": [97, 98]})).json() == {"prompt": "ab"}
    payload = (await client.get("/shoal/tokenizer")).json()
    assert payload == {"version": 1, "kind": "fake-chars", "block_size": 4}
    await post(client, "/v1/completions", {"prompt": "abcdefgh", "max_tokens": 1})
    digest = (await client.get("/shoal/kv/digest")).json()
    assert digest["block_size"] == 4 and len(digest["hashes"]) == 1


async def test_cached_tokens_reported(make_client: Any) -> None:
    client, _, _ = await make_client()
    await post(client, "/v1/completions", {"prompt": "abcdefghij", "max_tokens": 1})
    r = await post(client, "/v1/completions", {"prompt": "abcdefghij", "max_tokens": 1})
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 8


async def test_api_key(make_client: Any) -> None:
    client, _, _ = await make_client(api_key="sekret")
    r = await client.get("/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert (await client.get("/v1/models", headers={"Authorization": "Bearer sekret"})).status_code == 200
    assert (await client.get("/health")).status_code == 200


async def test_failed_step_fails_its_requests_and_the_engine_goes_on(make_client: Any) -> None:
    engine = FakeEngine()
    client, _, _ = await make_client(engine)
    engine.fail_next_step = RuntimeError("boom")
    r = await post(client, "/v1/completions", {"prompt": "x", "max_tokens": 3})
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "server_error" and "request failed in the engine" in error["message"]
    assert (await client.get("/health")).status_code == 200
    r = await post(client, "/v1/completions", {"prompt": "x", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert not engine.has_unfinished_requests()
    assert "shoal:engine_failed_steps_total" in (await client.get("/metrics")).text


async def test_failed_step_ends_a_stream_with_an_error_event(make_client: Any) -> None:
    engine = FakeEngine()
    client, _, _ = await make_client(engine)
    engine.fail_next_step = RuntimeError("boom")
    r = await post(client, "/v1/chat/completions",
                   {"messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True})  # fmt: skip
    events = [line for line in r.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "request failed in the engine" in error["message"]
    assert (await client.get("/health")).status_code == 200


async def test_failed_step_fails_only_the_requests_in_flight(make_client: Any) -> None:
    import asyncio

    engine = FakeEngine(step_delay_s=0.2)
    client, _, _ = await make_client(engine)
    first = asyncio.create_task(post(client, "/v1/completions", {"prompt": "a", "max_tokens": 50}))
    while not engine.running:
        await asyncio.sleep(0.01)
    engine.fail_next_step = RuntimeError("boom")
    assert (await asyncio.wait_for(first, 5)).status_code == 500
    second = await asyncio.wait_for(post(client, "/v1/completions", {"prompt": "b", "max_tokens": 5}), 5)
    assert second.status_code == 200
    assert "a" in engine.aborted or not engine.has_unfinished_requests()


async def test_openapi_describes_the_request_bodies(make_client: Any) -> None:
    client, _, _ = await make_client()
    doc = (await client.get("/openapi.json")).json()
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert "messages" in chat["required"] and "top_k" in chat["properties"]
    assert "CompletionRequest" in doc["components"]["schemas"]


async def test_an_engine_whose_every_step_fails_turns_unhealthy(make_client: Any) -> None:
    from shoal.engine.server.async_engine import MAX_CONSECUTIVE_STEP_FAILURES

    engine = FakeEngine()
    client, _, _ = await make_client(engine)
    engine.fail_every_step = RuntimeError("lost the device")
    for _ in range(MAX_CONSECUTIVE_STEP_FAILURES - 1):
        assert (await post(client, "/v1/completions", {"prompt": "x", "max_tokens": 2})).status_code == 500
        assert (await client.get("/health")).status_code == 200  # isolated failures: still serving
    r = await post(client, "/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert r.status_code in (500, 503)
    assert (await client.get("/health")).status_code == 503
    r = await post(client, "/v1/completions", {"prompt": "x", "max_tokens": 2})
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
