"""Tenancy on the engine side (docs/contracts.md): trusted headers, tenant-scoped programs, admin
endpoints behind the key, program usage on streams, capacity metrics, admission by prompts x n."""

from __future__ import annotations

import json
from typing import Any

from server_fakes import FakeEngine
from server_helpers import metric_values

KEY = {"Authorization": "Bearer sekret"}
MSGS = [{"role": "user", "content": "hello tenants, a prompt long enough to fill blocks"}]


def tenant(name: str, salt: str | None = None, **extra: str) -> dict[str, str]:
    return {**KEY, "x-shoal-tenant": name, "x-shoal-cache-salt": salt if salt is not None else name, **extra}


async def test_trusted_headers_reach_the_engine(make_client: Any) -> None:
    client, _, engine = await make_client(api_key="sekret")
    r = await client.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 2, "priority": 1},
                          headers=tenant("alice", "s-a", **{"x-shoal-priority": "7"}))  # fmt: skip
    assert r.status_code == 200
    added = engine.added[-1][2]
    assert (added["tenant"], added["cache_salt"], added["priority"]) == ("alice", "s-a", 7)
    # without the header, a trusted caller's body priority counts
    await client.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 2, "priority": 3}, headers=KEY)
    assert engine.added[-1][2]["priority"] == 3
    r = await client.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 2},
                          headers={**KEY, "x-shoal-priority": "high"})  # fmt: skip
    assert r.status_code == 400 and "x-shoal-priority" in r.json()["error"]["message"]


async def test_untrusted_callers_never_reach_generation_or_admin_endpoints(make_client: Any) -> None:
    client, _, _ = await make_client(api_key="sekret")
    for method, path in [("POST", "/v1/programs/p/release"), ("GET", "/shoal/kv/digest"),
                         ("GET", "/shoal/tokenizer"), ("GET", "/shoal/kv/capacity"),
                         ("POST", "/v1/chat/completions")]:  # fmt: skip
        r = await client.request(method, path, headers={"x-shoal-tenant": "alice"})
        assert r.status_code == 401, path
        assert (await client.request(method, path, headers={"Authorization": "Bearer wrong"})).status_code == 401
    assert (await client.get("/shoal/kv/capacity", headers=KEY)).status_code == 200


async def test_programs_are_scoped_by_tenant(make_client: Any) -> None:
    client, _, engine = await make_client(api_key="sekret")
    body = {"messages": MSGS, "max_tokens": 2, "program_id": "shared-id", "program_retention_s": 60}
    assert (await client.post("/v1/chat/completions", json=body, headers=tenant("alice"))).status_code == 200
    assert (await client.post("/v1/chat/completions", json=body, headers=tenant("bob"))).status_code == 200
    assert set(engine.pinned) == {("alice", "shared-id"), ("bob", "shared-id")}
    r = await client.post("/v1/programs/shared-id/release", headers=tenant("mallory"))
    assert r.json()["released_blocks"] == 0 and len(engine.pinned) == 2
    r = await client.post("/v1/programs/shared-id/release", headers=tenant("bob"))
    assert r.json()["released_blocks"] > 0 and set(engine.pinned) == {("alice", "shared-id")}


async def test_cache_salt_separates_cached_tokens(make_client: Any) -> None:
    client, _, _ = await make_client(api_key="sekret")

    async def cached(headers: dict[str, str]) -> int:
        r = await client.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 1}, headers=headers)
        return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])

    assert await cached(tenant("alice")) == 0
    assert await cached(tenant("alice")) > 0
    assert await cached(tenant("bob")) == 0, "another tenant's salt must not hit alice's blocks"


async def test_program_streams_end_with_a_usage_comment(make_client: Any) -> None:
    client, _, _ = await make_client()
    chat = {"messages": MSGS, "max_tokens": 3, "stream": True, "program_id": "p1"}
    cmpl = {"prompt": "hello", "max_tokens": 3, "stream": True, "program_id": "p1"}
    for path, body in [("/v1/chat/completions", chat), ("/v1/completions", cmpl)]:
        text = (await client.post(path, json=body)).text
        events = [e for e in text.split("\n\n") if e]
        assert events[-1] == "data: [DONE]" and events[-2].startswith(": shoal-usage ")
        usage = json.loads(events[-2].removeprefix(": shoal-usage "))
        assert usage["completion_tokens"] == 3 and usage["prompt_tokens"] > 0 and "cached_tokens" in usage
        text = (await client.post(path, json={**body, "program_id": None})).text
        assert "shoal-usage" not in text


async def test_capacity_metrics_and_endpoint(make_client: Any) -> None:
    client, _, engine = await make_client(FakeEngine(num_blocks=100, block_size=4))
    await client.post("/v1/completions", json={"prompt": "abcdefghij", "max_tokens": 1})
    values = metric_values((await client.get("/metrics")).text)
    assert values["shoal:kv_blocks_total"] == 100 and values["shoal:kv_block_size"] == 4
    assert "shoal:kv_blocks_cached" in values and "shoal:free_blocks" in values and "shoal:pinned_blocks" in values
    capacity = (await client.get("/shoal/kv/capacity")).json()
    assert capacity["kv_blocks_total"] == 100 and capacity["block_size"] == 4
    assert capacity["free_blocks"] == engine.stats().num_free_blocks


async def test_max_waiting_counts_prompts_times_n_on_an_empty_queue(make_client: Any) -> None:
    client, _, engine = await make_client(max_waiting=8)
    r = await client.post("/v1/completions", json={"prompt": [f"p{i}" for i in range(100)], "max_tokens": 1})
    assert r.status_code == 400 and "at most 8" in r.json()["error"]["message"]
    r = await client.post("/v1/completions", json={"prompt": ["a", "b", "c"], "n": 3, "max_tokens": 1})
    assert r.status_code == 400
    assert not engine.added
    r = await client.post("/v1/completions", json={"prompt": ["a", "b"], "n": 4, "max_tokens": 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == 8


async def test_min_tokens_above_max_tokens_is_refused_like_the_router(make_client: Any) -> None:
    client, _, _ = await make_client()
    r = await client.post("/v1/chat/completions", json={"messages": MSGS, "max_tokens": 2, "min_tokens": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "min_tokens"
