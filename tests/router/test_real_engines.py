"""Acceptance: the router in front of two REAL engine processes serving a tiny random model.

Engines are ``python -m shoal.engine serve`` subprocesses on 127.0.0.1; routers run
in-process. The fault test (kill + restart an engine) is in the slow tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest
from _fakes import FakeEngine, Served

from shoal.router.app import create_app
from shoal.router.config import RouterConfig
from support.processes import wait_healthy

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EngineProc:
    def __init__(self, model: Path, port: int, log: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.model, self.port, self.log = model, port, log
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.engine", "serve", "--model", str(self.model), "--host", "127.0.0.1",
                 "--port", str(self.port), "--served-model-name", "tiny", "--device", "cpu", "--num-threads", "1",
                 "--max-num-seqs", "16", "--log-level", "warning", *self.extra_args],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )

    def wait_ready(self, timeout_s: float = 120) -> None:
        assert self.proc is not None
        wait_healthy(self.url, self.proc, self.log, timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def running_engines(model: Path, tmp: Path, count: int = 2, extra_args: tuple[str, ...] = ()) -> Iterator[list[EngineProc]]:
    """``count`` engine processes on ``model``, started together, ready, stopped on exit."""
    procs = [EngineProc(model, _free_port(), tmp / f"engine{i}.log", extra_args) for i in range(count)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EngineProc]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.tiny_models import build_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("real-engines")
    model = build_tiny_checkpoint("llama", tmp / "tiny")
    with running_engines(model, tmp) as procs:
        yield procs


def config(urls: list[str], picker: str = "max-score", **extra: Any) -> RouterConfig:
    picking: dict[str, Any] = {"picker": picker}
    if picker == "round-robin":
        picking["scorers"] = []
    data: dict[str, Any] = {
        "pools": [{"name": "chat", "models": ["tiny"], "aliases": ["tiny-chat"], "endpoints": {"static": urls}}],
        "picking": picking,
        "health": {"scrapeIntervalS": 0.1, "probeTimeoutS": 1},
        "circuitBreaker": {"consecutiveFailures": 2, "ejectS": 0.5, "maxEjectS": 1},
        "timeouts": {"connectS": 1, "firstByteS": 60, "idleS": 30, "totalS": 120},
    }
    data.update(extra)
    return RouterConfig.model_validate(data)


async def start_router(cfg: RouterConfig) -> tuple[Served, Any]:
    app = create_app(cfg)
    served = await Served(app).start()
    async with httpx.AsyncClient() as c:
        for _ in range(300):
            health = (await c.get(served.url + "/health")).json()
            pool = app.services.pools["chat"]
            tokenizer_ready = not pool.needs_hashes or pool.hasher.tokenizer is not None
            if health["status"] == "ok" and tokenizer_ready:
                break
            await asyncio.sleep(0.05)
    return served, app


@pytest.fixture
async def router(engines: list[EngineProc]) -> AsyncIterator[tuple[Served, Any]]:
    fake = await Served(FakeEngine("fake", models=("fake-model",)).app()).start()
    cfg = config([e.url for e in engines])
    data = cfg.to_yaml_dict()
    data["pools"].append({"name": "fake", "models": ["fake-model"], "endpoints": {"static": [fake.url]},
                          "tokenizer": {"source": "none"}})
    served, app = await start_router(RouterConfig.model_validate(data))
    yield served, app
    await served.stop()
    await fake.stop()


async def test_openai_client_through_the_router(router: tuple[Served, Any]) -> None:
    served, _ = router
    client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="unused")
    models = await client.models.list()
    assert {m.id for m in models.data} == {"tiny", "tiny-chat", "fake-model"}  # every pool listed
    chat = await client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "Hello!"}], max_tokens=5, temperature=0
    )
    assert chat.model == "tiny" and chat.usage is not None and chat.usage.completion_tokens == 5
    stream = await client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Count"}], max_tokens=6, stream=True, temperature=0
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert len("".join(pieces)) > 0
    comp = await client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=4)
    assert comp.choices[0].text
    cstream = await client.completions.create(model="tiny", prompt="Once", max_tokens=4, stream=True)
    assert [c async for c in cstream]
    other = await client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}])
    assert other.choices[0].message.content
    await client.close()


async def _conversations(url: str, tag: str, convs: int = 3, turns: int = 4) -> tuple[int, int]:
    """Multi-turn chats (each turn extends the last); returns (cached tokens, prompt tokens) after turn 1."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
    cached = prompt = 0
    for c in range(convs):
        messages: list[Any] = [
            {"role": "system", "content": f"[{tag} {c}] You are a careful assistant. " + "Be brief and kind. " * 6}
        ]
        for t in range(turns):
            messages.append({"role": "user", "content": f"Question {t} about topic {c}: why is the sky blue?"})
            r = await client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
            assert r.usage is not None
            details = r.usage.prompt_tokens_details
            if t > 0:
                cached += details.cached_tokens or 0 if details else 0
                prompt += r.usage.prompt_tokens
            messages.append({"role": "assistant", "content": r.choices[0].message.content or ""})
    await client.close()
    return cached, prompt


async def test_prefix_affinity_beats_round_robin_on_cached_tokens(engines: list[EngineProc]) -> None:
    urls = [e.url for e in engines]
    aware, _ = await start_router(config(urls))
    rr, _ = await start_router(config(urls, picker="round-robin"))
    try:
        stamp = str(time.time_ns())  # fresh prompts: nothing from earlier tests is cached
        aware_cached, aware_prompt = await _conversations(aware.url, "aware" + stamp)
        rr_cached, _ = await _conversations(rr.url, "rr" + stamp)
    finally:
        await aware.stop()
        await rr.stop()
    # Prefix-aware: every later turn lands where the previous turns are cached.
    assert aware_cached >= 0.6 * aware_prompt, (aware_cached, aware_prompt)
    assert aware_cached > rr_cached, (aware_cached, rr_cached)


async def test_bad_input_and_auth_with_real_engines(engines: list[EngineProc], tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("team:sk-test\n")
    cfg = config([e.url for e in engines], auth={"apiKeysFile": str(keys)},
                 rateLimits={"default": {"requestsPerSecond": 0.2, "burst": 1}})
    served, app = await start_router(cfg)
    try:
        bad = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
        good = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="sk-test", max_retries=0)
        with pytest.raises(openai.BadRequestError):
            await good.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "x"}], temperature=cast(Any, "hot")
            )
        async with httpx.AsyncClient(base_url=served.url, headers={"authorization": "Bearer sk-test"}) as c:
            r = await c.post("/v1/chat/completions", content=b'{"model": "tiny", "messages": ',
                             headers={"content-type": "application/json"})
            assert r.status_code == 400
        text = app.services.metrics.render().decode()
        assert "shoal_router_requests_total{" not in text  # no engine was contacted so far
        ok = await good.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        assert ok.choices  # the burst allows one
        with pytest.raises(openai.RateLimitError) as err:
            await good.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2)
        assert int(err.value.response.headers["retry-after"]) >= 1
        await bad.close()
        await good.close()
    finally:
        await served.stop()


@pytest.mark.slow
async def test_engine_killed_mid_run_then_restarted(engines: list[EngineProc]) -> None:
    a, b = engines
    served, app = await start_router(config([a.url, b.url], picker="round-robin"))
    client = openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    started = asyncio.Event()
    first_chunks = 0

    async def long_stream(i: int) -> str:
        nonlocal first_chunks
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"stream {i}"}], max_tokens=300, stream=True,
            extra_body={"ignore_eos": True},
        )
        counted = False
        try:
            async for _ in stream:
                if not counted:
                    counted = True
                    first_chunks += 1
                    if first_chunks == 4:
                        started.set()
            return "completed"
        except openai.APIError:
            return "error-event"

    try:
        tasks = [asyncio.create_task(long_stream(i)) for i in range(4)]
        await asyncio.wait_for(started.wait(), 60)
        b.kill()
        # Requests not yet started: none may fail, even before the breaker has ejected b.
        for i in range(6):
            r = await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"after {i}"}], max_tokens=3
            )
            assert r.choices
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 120)
        assert sorted(outcomes) == ["completed", "completed", "error-event", "error-event"], outcomes
        metrics = app.services.metrics.render().decode()
        assert f'shoal_router_endpoint_ejections_total{{endpoint="{b.url}",pool="chat"}} 1.0' in metrics
        pool = app.services.pools["chat"]
        state = pool.endpoints.get(b.url)
        assert state is not None and not state.breaker.available
        # Restart on the same port: the prober readmits it and it takes traffic again.
        b.start()
        b.wait_ready()
        for _ in range(200):
            if state.breaker.available:
                break
            await asyncio.sleep(0.05)
        assert state.breaker.available
        for i in range(4):
            await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"x{i}"}],
                                                 max_tokens=2)
        metrics = app.services.metrics.render().decode()
        assert "shoal_router_endpoint_readmissions_total" in metrics
        assert f'shoal_router_requests_total{{endpoint="{b.url}",pool="chat",status="200"}}' in metrics
    finally:
        await client.close()
        await served.stop()
