"""Acceptance: a tool-calling agent conversation gets precise prefix affinity end to end.

Two real engine processes (tiny random model, a chat template that renders tools and tool
calls) behind the real router in ``precise`` prefix mode. The client sends what OpenAI
clients send in an agent loop: a developer message, tools, assistant turns with
``content: null`` + ``tool_calls``, tool results, content parts. From turn 2 on every turn
must hit the cache, on the engine that served turn 1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_chat_contract import SEARCH, WEATHER, build_agent_model
from test_real_engines import EngineProc, config, running_engines, start_router

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DIGEST_INTERVAL_S = 0.1


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EngineProc]]:
    tmp = tmp_path_factory.mktemp("chat-affinity")
    model = build_agent_model(tmp / "tiny")
    with running_engines(model, tmp) as procs:
        yield procs


async def _requests_by_endpoint(router_url: str) -> dict[str, float]:
    async with httpx.AsyncClient() as c:
        text = (await c.get(router_url + "/metrics")).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "shoal_router_requests_total" and sample.labels.get("pool") == "chat":
                counts[sample.labels["endpoint"]] = counts.get(sample.labels["endpoint"], 0) + sample.value
    return counts


def _agent_turns(stamp: str) -> list[list[dict[str, Any]]]:
    """The messages an agent client sends on each turn (each turn extends the previous one)."""
    developer = {"role": "developer", "content": f"[{stamp}] You are a travel agent. Call tools before answering."}
    user = {"role": "user", "content": [{"type": "text", "text": "Umbrella for Paris tomorrow?"},
                                        {"type": "text", "text": "I leave at 8am."}]}  # fmt: skip
    call_1 = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    result_1 = {"role": "tool", "tool_call_id": "call_1", "content": '{"rain_mm": 6, "temp_c": 11, "wind_kmh": 30}'}
    call_2 = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_2", "type": "function", "function": {"name": "search", "arguments": '{"q": "paris rain 8am"}'}}]}
    result_2 = {"role": "tool", "tool_call_id": "call_2", "content": "Showers expected between 7am and 10am."}
    answer = {"role": "assistant", "content": "Yes, take an umbrella: showers until 10am."}
    follow_up = {"role": "user", "content": "And a coat?"}
    turns: list[list[dict[str, Any]]] = [[developer, user], [call_1, result_1], [call_2, result_2], [answer, follow_up]]
    out: list[list[dict[str, Any]]] = []
    messages: list[dict[str, Any]] = []
    for added in turns:
        messages = messages + added
        out.append(messages)
    return out


async def test_tool_calling_agent_gets_cache_affinity(engines: list[EngineProc]) -> None:
    cfg = config([e.url for e in engines], picking={"prefix": {"mode": "precise", "digestIntervalS": DIGEST_INTERVAL_S}})
    served, _ = await start_router(cfg)
    client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    try:
        cached_per_turn: list[int] = []
        endpoint_per_turn: list[str] = []
        for messages in _agent_turns(str(time.time_ns())):
            before = await _requests_by_endpoint(served.url)
            r = await client.chat.completions.create(
                model="tiny", messages=messages, tools=[WEATHER, SEARCH], max_tokens=4, temperature=0  # type: ignore[arg-type]
            )
            details = r.usage.prompt_tokens_details if r.usage else None
            cached_per_turn.append(details.cached_tokens or 0 if details else 0)
            # Let the router replace what it sent with the engines' own digests: affinity must come
            # from hashes equal to the engine's, not from the router's memory of its own guesses.
            await asyncio.sleep(3 * DIGEST_INTERVAL_S)
            after = await _requests_by_endpoint(served.url)
            endpoint_per_turn += [url for url in after if after[url] > before.get(url, 0)]
    finally:
        await client.close()
        await served.stop()
    assert len(endpoint_per_turn) == len(cached_per_turn) and len(set(endpoint_per_turn)) == 1, endpoint_per_turn
    assert all(c > 0 for c in cached_per_turn[1:]), cached_per_turn
