"""Tenancy on a real (tiny) engine: cache salts hide one tenant's prompts from another's cached
tokens; program pins are per (tenant, program_id) and capped by the per-tenant quota."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shoal.engine.config import EngineConfig
from shoal.engine.llm_engine import LLMEngine
from shoal.engine.server.api_server import create_app
from shoal.engine.server.async_engine import AsyncEngine
from shoal.engine.server.settings import ServerSettings

QUOTA = 4
SECRET = [{"role": "user", "content": "alice's secret plan: " + "buy low, sell high; " * 12}]


def tenant(name: str) -> dict[str, str]:
    return {"Authorization": "Bearer k", "x-shoal-tenant": name, "x-shoal-cache-salt": f"salt-{name}"}


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> LLMEngine:
    config = EngineConfig(model=str(tiny_model_dir), num_kv_blocks=64, num_threads=1, max_model_len=256,
                          max_pinned_blocks_per_tenant=QUOTA)  # fmt: skip
    return LLMEngine(config)


@pytest.fixture
async def client(engine: LLMEngine) -> AsyncIterator[httpx.AsyncClient]:
    settings = ServerSettings(served_model_name="tiny", block_size=engine.block_size, api_key="k")
    app = create_app(AsyncEngine(engine), settings)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        yield await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60))


async def cached_tokens(client: httpx.AsyncClient, who: str) -> int:
    r = await client.post("/v1/chat/completions", json={"messages": SECRET, "max_tokens": 1}, headers=tenant(who))
    assert r.status_code == 200, r.text
    return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


async def test_cached_tokens_reveal_nothing_across_tenants(client: httpx.AsyncClient) -> None:
    assert await cached_tokens(client, "alice") == 0
    assert await cached_tokens(client, "alice") > 0
    assert await cached_tokens(client, "bob") == 0, "bob must not learn that alice sent this prompt"


async def test_pins_are_per_tenant_and_within_the_quota(client: httpx.AsyncClient, engine: LLMEngine) -> None:
    body = {"messages": SECRET, "max_tokens": 2, "program_id": "plan", "program_retention_s": 3600}
    for who in ("alice", "bob"):
        assert (await client.post("/v1/chat/completions", json=body, headers=tenant(who))).status_code == 200
    assert engine.programs.tenant_blocks("alice") == QUOTA, "a long prompt is cut to the tenant's quota"
    assert engine.programs.tenant_blocks("bob") == QUOTA
    released = (await client.post("/v1/programs/plan/release", headers=tenant("mallory"))).json()
    assert released["released_blocks"] == 0 and engine.programs.num_programs == 2
    capacity = (await client.get("/shoal/kv/capacity", headers=tenant("bob"))).json()
    assert capacity["pinned_blocks"] == 2 * QUOTA and capacity["programs"] == 2
    for who in ("alice", "bob"):
        released = (await client.post("/v1/programs/plan/release", headers=tenant(who))).json()
        assert released["released_blocks"] == QUOTA
    assert engine.programs.num_programs == 0
    assert engine.programs.max_retention_s == 600.0, "the default retention cap"
