"""Acceptance (issue 9, several router replicas): two router processes in front of the same engines.

A program's calls alternate between the two routers; every call is served by the replica
that owns the program (the other forwards it, keeping the client's API key), so one
process sees all of its turns. Killing the owner moves the program to the survivor.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _fakes import FakeEngine, Served
from prometheus_client.parser import text_string_to_metric_families
from test_real_engines import _free_port

from shoal.router.programs.ownership import owner_of

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-team-a"
MESSAGES = [{"role": "user", "content": "hello"}]
SECRET_ENV = "SHOAL_TEST_PEER_SECRET"


class RouterProc:
    def __init__(self, port: int, config: Path, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.port, self.config, self.log = port, config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, SECRET_ENV: "peer-secret"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.router", "--config", str(self.config), "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )  # fmt: skip

    async def wait_ready(self, timeout_s: float = 60) -> None:
        assert self.proc is not None
        async with httpx.AsyncClient() as c:
            for _ in range(int(timeout_s / 0.1)):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"router exited: {self.log.read_text()[-2000:]}")
                try:
                    if (await c.get(self.url + "/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"router not ready: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[list[RouterProc], list[FakeEngine]]]:
    engines = [FakeEngine(f"e{i}") for i in range(2)]
    served = [await Served(e.app()).start() for e in engines]
    (tmp_path / "keys").write_text(f"team-a:{KEY}\n")
    ports = [_free_port() for _ in range(2)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    routers = []
    for i, port in enumerate(ports):
        cfg = {
            "pools": [{"name": "chat", "models": ["tiny"], "endpoints": {"static": [s.url for s in served]},
                       "tokenizer": {"source": "none"}}],
            "auth": {"apiKeysFile": str(tmp_path / "keys")},
            "health": {"scrapeIntervalS": 0.2},
            "programs": {"forwardedSecretEnv": SECRET_ENV, "classes": [{"name": "agents", "model": "tiny"}]},
            "peers": {"self": urls[i], "static": urls, "healthIntervalS": 0.2},
        }  # fmt: skip
        path = tmp_path / f"router{i}.yaml"
        path.write_text(json.dumps(cfg))
        routers.append(RouterProc(port, path, tmp_path / f"router{i}.log"))
    for r in routers:
        r.start()
    try:
        for r in routers:
            await r.wait_ready()
        for r in routers:  # each has seen the other answer since it started
            for _ in range(100):
                if await _metric(r.url, "shoal_router_live_replicas") == len(routers):
                    break
                await asyncio.sleep(0.05)
        yield routers, engines
    finally:
        for r in routers:
            r.kill()
        for s in served:
            await s.stop()


async def _metric(url: str, name: str, **labels: str) -> float:
    async with httpx.AsyncClient() as c:
        text = (await c.get(url + "/metrics")).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def _call(client: httpx.AsyncClient, router: str, program_id: str, turn: int, stream: bool) -> None:
    body: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": f"turn {turn}"}],
                            "program_id": program_id, "stream": stream}  # fmt: skip
    r = await client.post(router + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    if stream:
        assert r.text.rstrip().endswith("data: [DONE]") and "error" not in r.text
    else:
        assert r.json()["choices"][0]["message"]["content"]


async def _program(client: httpx.AsyncClient, router: str, program_id: str) -> dict[str, Any]:
    r = await client.get(router + f"/v1/programs/{program_id}", headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_one_program_alternating_between_two_routers(
    cluster: tuple[list[RouterProc], list[FakeEngine]],
) -> None:
    routers, engines = cluster
    urls = [r.url for r in routers]
    program = next(p for p in (f"agent-{i}" for i in range(100)) if owner_of(p, urls) == urls[1])
    owner, other = routers[1], routers[0]
    turns = 8
    async with httpx.AsyncClient(timeout=30) as client:
        for turn in range(turns):
            await _call(client, urls[turn % 2], program, turn, stream=False)
        # One record, held by the owner, with every turn, whichever router is asked.
        seen = [await _program(client, r.url, program) for r in routers]
        stable = ("id", "class_name", "engine", "turns", "context_tokens", "prompt_tokens_total")
        assert [{k: view[k] for k in stable} for view in seen] == [{k: seen[0][k] for k in stable}] * 2
        assert seen[0]["turns"] == turns and seen[0]["prompt_tokens_total"] == turns  # the fake's usage: 1 each
        listed = (await client.get(other.url + "/v1/programs", headers={"authorization": f"Bearer {KEY}"})).json()
        assert [(p["id"], p["turns"]) for p in listed["data"]] == [(program, turns)]
        # The owner sent every turn to the engines; the other replica only forwarded.
        assert await _metric(owner.url, "shoal_router_requests_total", status="200") == turns
        assert await _metric(other.url, "shoal_router_requests_total") == 0
        assert await _metric(other.url, "shoal_router_peer_forwards_total", outcome="forwarded") >= turns / 2
        assert sum(len(e.requests) for e in engines) == turns  # each turn reached an engine once
        # The client's key went along: the owner authenticated the tenant again.
        assert {h.get("x-shoal-tenant") for e in engines for h in e.headers_seen} == {"team-a"}
        # Streams are relayed through the forwarding replica too.
        await _call(client, other.url, program, turns, stream=True)
        # A bad key is refused where it lands, and a client cannot claim to be a peer.
        bad = await client.post(other.url + "/v1/chat/completions", headers={"authorization": "Bearer nope"},
                                json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                      "program_id": program})  # fmt: skip
        assert bad.status_code == 401
        spoofed = await client.post(
            other.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {KEY}", "x-shoal-forwarded": "1"},
            json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "program_id": program},
        )
        assert spoofed.status_code == 200
        assert await _metric(other.url, "shoal_router_requests_total") == 0
        assert (await _program(client, other.url, program))["turns"] == turns + 1  # the spoofed call, at the owner

        # The owner dies in the middle of a stream relayed by the other replica: the client gets
        # an error event and the end of the stream, as when an engine dies mid-stream.
        for e in engines:
            e.tokens, e.token_delay_s = 20, 0.1
        body = {"model": "tiny", "messages": MESSAGES, "program_id": program, "stream": True}
        async with client.stream("POST", other.url + "/v1/chat/completions", json=body,
                                 headers={"authorization": f"Bearer {KEY}"}) as streamed:  # fmt: skip
            assert streamed.status_code == 200
            chunks = streamed.aiter_text()
            received = await anext(chunks)
            owner.kill()
            received += "".join([c async for c in chunks])
        assert '"error"' in received and received.rstrip().endswith("data: [DONE]"), received[-300:]
        for e in engines:
            e.tokens, e.token_delay_s = 4, 0.0

        # The program goes on through the survivor, which starts a fresh record.
        for turn in range(4):
            await _call(client, other.url, program, turn, stream=False)
        assert await _metric(other.url, "shoal_router_requests_total", status="200") == 4
        assert await _metric(other.url, "shoal_router_live_replicas") == 1
        assert (await _program(client, other.url, program))["turns"] == 4
        assert sum(len(e.requests) for e in engines) == turns + 3 + 4
