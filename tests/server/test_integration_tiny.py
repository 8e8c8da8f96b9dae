"""A real server process with the real engine on a tiny random model, driven by the official openai client."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bad_requests
import httpx
import openai
import pytest
from server_helpers import ServerProcess, engine_server, metric_values

from shoal.engine.block_hash import prefix_block_hashes
from shoal.engine.tokenizer import Tokenizer

pytestmark = pytest.mark.integration

MAX_WAITING = 4
MAX_BODY = 64 * 1024
TOOLS: list[Any] = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--num-kv-blocks", "64", "--max-num-seqs", "4", "--num-threads", "1", "--max-waiting", str(MAX_WAITING),
            "--max-body-bytes", str(MAX_BODY), "--served-model-name", "tiny", "--log-level", "warning",
            "--max-header-bytes", "16384", "--header-timeout", "1", "--body-timeout", "1"]  # fmt: skip
    with engine_server(str(tiny_model_dir), *args, log_dir=tmp_path_factory.mktemp("logs")) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def metrics(server: ServerProcess) -> dict[str, float]:
    return metric_values(httpx.get(server.url + "/metrics").text)


def test_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].finish_reason in ("length", "stop") and r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens <= 6 and r.usage.prompt_tokens > 0
    again = client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert again.choices[0].text == r.choices[0].text


def test_chat_n_and_seed(client: openai.OpenAI) -> None:
    msgs: list[Any] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"}]
    a = client.chat.completions.create(model="tiny", messages=msgs, n=3, max_tokens=8, seed=7, temperature=1.0)
    b = client.chat.completions.create(model="tiny", messages=msgs, n=3, max_tokens=8, seed=7, temperature=1.0)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1
    assert a.usage is not None and a.usage.completion_tokens <= 3 * 8


def test_stream_equals_non_stream(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": "Tell a story"}],
                              "max_tokens": 24, "seed": 11, "temperature": 0.8}  # fmt: skip
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens  # type: ignore[union-attr]
    # completions API too
    full_c = client.completions.create(model="tiny", prompt="Once", max_tokens=16, seed=3, temperature=1.0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Once", max_tokens=16, seed=3, temperature=1.0, stream=True) if c.choices)  # fmt: skip
    assert streamed == full_c.choices[0].text


def test_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       logprobs=True, top_logprobs=3, temperature=0)  # fmt: skip
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == r.usage.completion_tokens  # type: ignore[union-attr]
    for item in content:
        assert len(item.top_logprobs) == 3 and item.logprob <= 0
        # greedy: the sampled token is the most likely one
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)
    c = client.completions.create(model="tiny", prompt="hello", max_tokens=3, logprobs=2)
    lp = c.choices[0].logprobs
    assert lp is not None and len(lp.tokens or []) == 3 and all(len(t) == 2 for t in lp.top_logprobs or [])


def test_stop(client: openai.OpenAI) -> None:
    base = client.completions.create(model="tiny", prompt="Count:", max_tokens=12, temperature=0)
    text = base.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip()
    r = client.completions.create(model="tiny", prompt="Count:", max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].text == text[: text.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_tools_round_trip(client: openai.OpenAI, server: ServerProcess) -> None:
    msgs: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=TOOLS, tool_choice="auto", max_tokens=8)
    assert r.choices[0].finish_reason in ("length", "stop", "tool_calls")
    # The tool definitions went through the chat template into the prompt.
    with_tools = httpx.post(server.url + "/tokenize", json={"messages": msgs, "tools": TOOLS}).json()
    without = httpx.post(server.url + "/tokenize", json={"messages": msgs}).json()
    assert r.usage is not None and r.usage.prompt_tokens == with_tools["count"] > without["count"]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    msgs += [{"role": "assistant", "content": None, "tool_calls": [call]},
             {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"}]  # fmt: skip
    r2 = client.chat.completions.create(model="tiny", messages=msgs, tools=TOOLS, max_tokens=8)
    assert r2.choices[0].message.role == "assistant"
    tokens = httpx.post(server.url + "/tokenize", json={"messages": msgs, "tools": TOOLS}).json()["tokens"]
    rendered = httpx.post(server.url + "/detokenize", json={"tokens": tokens}).json()["prompt"]
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in rendered
    assert "<tool_response>\nsunny, 21C" in rendered


def test_models_tokenizer_payload_and_digest(client: openai.OpenAI, server: ServerProcess) -> None:
    (model,) = client.models.list().data
    assert model.id == "tiny"
    payload = httpx.get(server.url + "/shoal/tokenizer").json()
    block = payload["block_size"]
    tok = Tokenizer.from_payload(payload)
    prompt = "A long shared prefix that spans more than one block of tokens for sure. " * 3
    ids = httpx.post(server.url + "/tokenize", json={"prompt": prompt}).json()["tokens"]
    assert tok.encode(prompt) == ids
    client.completions.create(model="tiny", prompt=prompt, max_tokens=1)
    digest = httpx.get(server.url + "/shoal/kv/digest").json()
    assert digest["block_size"] == block
    assert set(prefix_block_hashes(ids, block)) <= set(digest["hashes"])


def test_bad_requests_table(server: ServerProcess) -> None:
    max_len = httpx.get(server.url + "/v1/models").json()["data"][0]["max_model_len"]
    table = bad_requests.cases("tiny", max_len, MAX_BODY)
    assert len(table) >= 20

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            for case in table:
                bad_requests.check(case, await bad_requests.send(c, case))
            assert (await c.get("/health")).status_code == 200
            ok = await c.post("/v1/completions", json={"prompt": "still fine", "max_tokens": 2})
            assert ok.status_code == 200

    asyncio.run(run())
    assert metrics(server)["vllm:num_requests_running"] == 0


def test_disconnect_frees_blocks(server: ServerProcess) -> None:
    base = metrics(server)

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            body = {"prompt": "go on and on", "max_tokens": 400, "ignore_eos": True, "stream": True}
            async with c.stream("POST", "/v1/completions", json=body) as r:
                seen = 0
                async for line in r.aiter_lines():
                    seen += line.startswith("data: ")
                    if seen >= 3:
                        break
                during = metrics(server)
                assert during["vllm:num_requests_running"] == 1 and during["vllm:kv_cache_usage_perc"] > 0

    asyncio.run(run())
    deadline = time.monotonic() + 5
    while (m := metrics(server))["vllm:num_requests_running"] != 0 or m["vllm:kv_cache_usage_perc"] > 0:
        assert time.monotonic() < deadline, m
        time.sleep(0.02)
    generated = m["vllm:generation_tokens_total"] - base["vllm:generation_tokens_total"]
    assert generated < 400  # aborted long before max_tokens


def test_overload_429_no_5xx(server: ServerProcess) -> None:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as c:
            body = {"prompt": "load " * 50, "max_tokens": 16, "ignore_eos": True}
            return list(await asyncio.gather(*(c.post("/v1/completions", json=body) for _ in range(32))))

    responses = asyncio.run(run())
    statuses = [r.status_code for r in responses]
    assert all(s < 500 for s in statuses), statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= MAX_WAITING, statuses
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["type"] == "rate_limit_error"
        else:
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16


def test_health_fast_during_long_batch(server: ServerProcess) -> None:
    async def run() -> list[float]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            body = {"prompt": "batch " * 100, "max_tokens": 120, "ignore_eos": True}
            batch = [asyncio.create_task(c.post("/v1/completions", json=body)) for _ in range(4)]
            await asyncio.sleep(0.3)
            times = []
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as probe:
                for _ in range(20):
                    start = time.perf_counter()
                    assert (await probe.get("/health")).status_code == 200
                    times.append(time.perf_counter() - start)
                    await asyncio.sleep(0.02)
            results = await asyncio.gather(*batch)
            assert all(r.status_code == 200 for r in results)
            return times

    times = asyncio.run(run())
    assert statistics.median(times) < 0.1 and sorted(times)[int(len(times) * 0.9)] < 0.1, times


def test_metrics_counters_move(client: openai.OpenAI, server: ServerProcess) -> None:
    before = metrics(server)
    prompt = "Metrics prompt long enough to fill at least two blocks of sixteen tokens each, surely. " * 2
    r1 = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, extra_body={"ignore_eos": True})
    r2 = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, extra_body={"ignore_eos": True})
    after = metrics(server)
    assert r1.usage is not None and r2.usage is not None

    def moved(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert moved("vllm:prompt_tokens_total") == r1.usage.prompt_tokens * 2
    assert moved("vllm:generation_tokens_total") == 10
    assert moved("vllm:time_to_first_token_seconds_count") == 2
    assert moved("vllm:e2e_request_latency_seconds_count") == 2
    assert moved("vllm:inter_token_latency_seconds_count") == 8
    assert moved("vllm:prefix_cache_queries_total") >= r1.usage.prompt_tokens * 2
    cached = r2.usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    assert cached and cached >= 16 and moved("vllm:prefix_cache_hits_total") >= cached
    assert after["vllm:num_requests_running"] == 0 and after["vllm:num_requests_waiting"] == 0
    assert any(k.startswith("vllm:cache_config_info{block_size=16,num_gpu_blocks=64}") for k in after)


def test_program_retention_and_release(client: openai.OpenAI, server: ServerProcess) -> None:
    msgs: list[Any] = [{"role": "user", "content": "Agent turn one with a long enough context to fill blocks. " * 3}]
    first = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=4,
                                           extra_body={"program_id": "prog-1", "program_retention_s": 60})  # fmt: skip
    m = metrics(server)
    assert m["shoal:programs"] == 1 and m["shoal:pinned_blocks"] > 0
    msgs += [{"role": "assistant", "content": first.choices[0].message.content or "ok"},
             {"role": "user", "content": "turn two"}]  # fmt: skip
    second = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=4,
                                            extra_body={"program_id": "prog-1", "program_retention_s": 60})  # fmt: skip
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    assert (second.usage.prompt_tokens_details.cached_tokens or 0) >= 16
    released = httpx.post(server.url + "/v1/programs/prog-1/release").json()
    assert released["program_id"] == "prog-1" and released["released_blocks"] > 0
    m = metrics(server)
    assert m["shoal:programs"] == 0 and m["shoal:pinned_blocks"] == 0


def test_header_and_body_limits_from_the_flags(server: ServerProcess) -> None:
    import socket
    import time

    host, port = server.url.removeprefix("http://").split(":")

    def answer(data: bytes) -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(data)
            received = b""
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except ConnectionResetError:
                pass
            return received

    assert answer(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n").startswith(
        b"HTTP/1.1 431"
    )
    start = time.monotonic()
    assert answer(b"GET /health HTTP/1.1\r\nHost: x\r\n").startswith(b"HTTP/1.1 408")
    assert answer(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{").startswith(
        b"HTTP/1.1 408"
    )
    assert time.monotonic() - start < 6
    assert httpx.get(server.url + "/health").status_code == 200
