"""Issue 11 acceptance, router side, with REAL engine processes (keyed: ``--api-key``) behind a
real router holding its own upstream credential: tenants cannot probe each other's prompts
through cached tokens, poison bodies leave every engine serving, and a killed engine is
sent traffic again within 5 s of its health turning good."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from _fakes import Served
from test_real_engines import ROOT, EngineProc, config, running_engines, start_router

pytestmark = pytest.mark.integration
ENGINE_KEY = "sk-engine-secret"


@pytest.fixture(scope="module")
def keyed_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EngineProc]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.tiny_models import build_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("keyed-engines")
    model = build_tiny_checkpoint("llama", tmp / "tiny")
    with running_engines(model, tmp, extra_args=("--api-key", ENGINE_KEY)) as procs:
        yield procs


@pytest.fixture
async def keyed_router(
    keyed_engines: list[EngineProc], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Served, Any]]:
    monkeypatch.setenv("SHOAL_TEST_ENGINE_KEY", ENGINE_KEY)
    keys = tmp_path / "keys"
    keys.write_text("alice:sk-alice\nbob:sk-bob\n")
    cfg = config([e.url for e in keyed_engines], auth={"apiKeysFile": str(keys)},
                 upstream={"apiKeyEnv": "SHOAL_TEST_ENGINE_KEY"})
    served, app = await start_router(cfg)
    yield served, app
    await served.stop()


def _client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


async def _cached(client: openai.AsyncOpenAI, prompt: str) -> int:
    r = await client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": prompt}, {"role": "user", "content": "hi"}],
        max_tokens=2, temperature=0,
    )
    assert r.usage is not None
    details = r.usage.prompt_tokens_details
    return (details.cached_tokens or 0) if details else 0


async def test_tenants_cannot_probe_each_others_prompts_via_cached_tokens(
    keyed_router: tuple[Served, Any], keyed_engines: list[EngineProc]
) -> None:
    served, _ = keyed_router
    # The engines refuse keyless callers; the router gets in with its own credential.
    async with httpx.AsyncClient() as c:
        r = await c.post(keyed_engines[0].url + "/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert r.status_code == 401
    alice, bob = _client(served.url, "sk-alice"), _client(served.url, "sk-bob")
    secret = f"Alice's confidential plan {time.time_ns()}: " + "merge the two divisions next quarter. " * 8
    assert await _cached(alice, secret) == 0
    assert await _cached(alice, secret) > 0  # her own cache works (and the router's hashes found it)
    assert await _cached(bob, secret) == 0  # the same prompt from another tenant reveals nothing
    assert await _cached(bob, secret) > 0
    await alice.close()
    await bob.close()


POISON = [
    {"min_tokens": 2, "stop_token_ids": [99999999]},
    {"n": 2, "seed": 18446744073709551615},
    {"top_k": 9223372036854775808},
]


async def test_poison_bodies_leave_every_engine_serving(
    keyed_router: tuple[Served, Any], keyed_engines: list[EngineProc]
) -> None:
    served, app = keyed_router
    async with httpx.AsyncClient(base_url=served.url, timeout=60,
                                 headers={"authorization": "Bearer sk-alice"}) as c:
        for extra in POISON:
            body = {"model": "tiny", "messages": [{"role": "user", "content": "poison"}], "max_tokens": 4, **extra}
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code < 500 or r.json()["error"]["message"], r.text
            await asyncio.sleep(0.5)  # the health checks a 5xx triggers have answered
            for engine in keyed_engines:
                async with httpx.AsyncClient(headers={"authorization": f"Bearer {ENGINE_KEY}"}) as direct:
                    assert (await direct.get(engine.url + "/health")).status_code == 200
                    ok = await direct.post(engine.url + "/v1/completions",
                                           json={"model": "tiny", "prompt": "alive?", "max_tokens": 2}, timeout=60)
                    assert ok.status_code == 200, (extra, ok.text)
            pool = app.services.pools["chat"]
            assert all(s.breaker.available for s in pool.endpoints), extra
            ok = await c.post("/v1/completions", json={"model": "tiny", "prompt": "and through the router", "max_tokens": 2})
            assert ok.status_code == 200


@pytest.mark.slow
async def test_killed_engine_gets_traffic_within_5_s_of_health_turning_good(
    keyed_router: tuple[Served, Any], keyed_engines: list[EngineProc]
) -> None:
    served, app = keyed_router
    b = keyed_engines[1]
    state = app.services.pools["chat"].endpoints.get(b.url)
    assert state is not None
    client = _client(served.url, "sk-alice")
    b.kill()
    # No client request hangs or fails while b is dead.
    for i in range(4):
        r = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"x{i}"}],
                                                 max_tokens=2)
        assert r.choices
    for _ in range(100):
        if not state.breaker.available:
            break
        await asyncio.sleep(0.05)
    assert not state.breaker.available
    await asyncio.sleep(3)  # a while down: probes keep failing (that must not lengthen its time out)
    b.start()
    await asyncio.to_thread(b.wait_ready)
    healthy_at = time.monotonic()
    served_before = _served_by(app, b.url)
    i = 0
    while _served_by(app, b.url) == served_before:
        assert time.monotonic() - healthy_at < 5.0, (
            f"the restarted engine got no traffic within 5 s: {app.services.pools['chat'].endpoints.candidates()}"
        )
        # Bursts, as live traffic comes: the other engine holds the shared template prefix, so a
        # lone request rightly goes there; a burst must spill onto the readmitted one.
        await asyncio.gather(*(
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"y{i}-{j}"}],
                                           max_tokens=1)
            for j in range(6)
        ))
        i += 1
    await client.close()


def _served_by(app: Any, url: str) -> float:
    text = app.services.metrics.render().decode()
    prefix = f'shoal_router_requests_total{{endpoint="{url}",pool="chat",status="200"}} '
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))
