"""Programs through the real router app against fake engines that speak the program contract (fast)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _fakes import Served
from program_fakes import ProgramEngine

from shoal.router.app import create_app
from shoal.router.config import RouterConfig
from shoal.router.programs.gateway import ProgramGateway
from shoal.router.server import uvicorn_settings

ALICE = {"authorization": "Bearer sk-alice"}
BOB = {"authorization": "Bearer sk-bob"}


class Harness:
    def __init__(self, tmp: Path, engines: list[ProgramEngine], programs: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.engines = engines
        self.servers = [Served(e.app()) for e in engines]
        self.programs = programs or {}
        self.url = ""

    async def __aenter__(self) -> Harness:
        for server in self.servers:
            await server.start()
        (self.tmp / "keys").write_text("alice:sk-alice\nbob:sk-bob\n")
        (self.tmp / "upstream").write_text("sk-router\n")
        cfg = RouterConfig.model_validate({
            "pools": [{"name": "chat", "models": ["tiny"], "endpoints": {"static": [s.url for s in self.servers]},
                       "tokenizer": {"source": "none"}}],
            "health": {"scrapeIntervalS": 0.05, "probeTimeoutS": 2.0},
            "timeouts": {"connectS": 0.5, "firstByteS": 5, "idleS": 5, "totalS": 20},
            "auth": {"apiKeysFile": str(self.tmp / "keys")},
            "upstream": {"apiKeyFile": str(self.tmp / "upstream")},
            "programs": {"tickS": 0.05, **self.programs},
        })
        self.app = create_app(cfg)
        self.router = await Served(self.app, settings=uvicorn_settings(cfg)).start()
        self.url = self.router.url
        for _ in range(300):  # until every engine's capacity was scraped
            if len(self.gateway.scheduler.engines()) == len(self.engines):
                return self
            await asyncio.sleep(0.02)
        raise AssertionError("engine capacities never arrived")

    @property
    def gateway(self) -> ProgramGateway:
        gateway = self.app.services.programs
        assert gateway is not None
        return gateway

    async def __aexit__(self, *exc: object) -> None:
        await self.router.stop()
        for server in self.servers:
            await server.stop()


@pytest.fixture
async def one(tmp_path: Path) -> AsyncIterator[Harness]:
    engine = ProgramEngine("e0", tool_call="bash")
    programs = {"classes": [{"name": "coder", "model": "tiny", "priority": 70}]}
    async with Harness(tmp_path, [engine], programs) as h:
        yield h


def chat(program_id: str | None = None, text: str = "fix the bug " * 20, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": text}], **kw}
    if program_id is not None:
        body["program_id"] = program_id
    return body


async def test_program_call_carries_retention_priority_and_is_accounted(one: Harness) -> None:
    engine = one.engines[0]
    async with httpx.AsyncClient(base_url=one.url, headers=ALICE) as c:
        r = await c.post("/v1/chat/completions", json=chat("p1", program_class="coder"))
        assert r.status_code == 200, r.text
        sent, headers = engine.requests[-1], engine.headers_seen[-1]
        assert sent["program_id"] == "p1" and sent["program_retention_s"] == 2.0
        assert "program_class" not in sent
        assert headers["x-shoal-priority"] == "70" and headers["x-shoal-tenant"] == "alice"
        r = await c.get("/v1/programs/p1")
        assert r.status_code == 200
        view = r.json()
        usage = engine.usage(sent)
        assert (view["turns"], view["class_name"], view["context_tokens"]) == (
            1, "coder", usage["prompt_tokens"] + usage["completion_tokens"])
        assert view["engine"] == one.servers[0].url and view["activity"] == "acting"
        # The next turn carries the tool result: the gap is the tool's duration.
        body = chat("p1")
        body["messages"] += [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        ]
        assert (await c.post("/v1/chat/completions", json=body)).status_code == 200
        assert len(one.gateway.scheduler.durations.samples("coder", "bash")) == 1
        listed = (await c.get("/v1/programs")).json()["data"]
        assert [p["id"] for p in listed] == ["p1"] and listed[0]["turns"] == 2


async def test_streamed_usage_comes_from_the_shoal_usage_comment(one: Harness) -> None:
    async with httpx.AsyncClient(base_url=one.url, headers=ALICE) as c:
        r = await c.post("/v1/chat/completions", json=chat("s1", stream=True))
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    program = one.gateway.scheduler.find("s1", "alice")
    assert program is not None and program.turns == 1 and program.last_tools == ("bash",)
    assert program.context_tokens == one.engines[0].usage(one.engines[0].requests[-1])["prompt_tokens"] + 8


async def test_requests_without_a_program_id_are_untouched(one: Harness) -> None:
    async with httpx.AsyncClient(base_url=one.url, headers=ALICE) as c:
        assert (await c.post("/v1/chat/completions", json=chat())).status_code == 200
        assert "program_retention_s" not in one.engines[0].requests[-1]
        assert (await c.get("/v1/programs")).json()["data"] == []


async def test_a_class_closed_to_the_key_is_403(tmp_path: Path) -> None:
    programs = {"classes": [{"name": "vip", "model": "tiny", "priority": 99, "tenants": ["alice"]}]}
    async with Harness(tmp_path, [ProgramEngine("e0")], programs) as h, httpx.AsyncClient(base_url=h.url) as c:
        r = await c.post("/v1/chat/completions", json=chat("b1", program_class="vip"), headers=BOB)
        assert r.status_code == 403 and r.json()["error"]["code"] == "program_class_forbidden"
        assert (await c.post("/v1/chat/completions", json=chat("b2"), headers=BOB)).status_code == 200
        assert h.engines[0].headers_seen[-1]["x-shoal-priority"] == "50"  # the default class, not vip's 99
        assert (await c.post("/v1/chat/completions", json=chat("a1"), headers=ALICE)).status_code == 200
        assert h.engines[0].headers_seen[-1]["x-shoal-priority"] == "99"


async def test_bad_program_inputs_are_400(one: Harness) -> None:
    async with httpx.AsyncClient(base_url=one.url, headers=ALICE) as c:
        r = await c.post("/v1/chat/completions", json=chat("p", program_class="nope"))
        assert r.status_code == 400 and r.json()["error"]["param"] == "program_class"
        r = await c.post("/v1/chat/completions", json=chat("bad id with spaces"))
        assert r.status_code == 400 and r.json()["error"]["param"] == "program_id"
        r = await c.post("/v1/chat/completions", json=chat("p", program_class=5))
        assert r.status_code == 400
    assert one.engines[0].requests == []


async def test_only_the_owner_sees_and_releases_and_pins_are_dropped(one: Harness) -> None:
    engine = one.engines[0]
    async with httpx.AsyncClient(base_url=one.url) as c:
        assert (await c.post("/v1/chat/completions", json=chat("p/1"), headers=ALICE)).status_code == 200
        for method, path in (("GET", "/v1/programs/p/1"), ("POST", "/v1/programs/p/1/release")):
            r = await c.request(method, path, headers=BOB)
            assert r.status_code == 404 and r.json()["error"]["code"] == "program_not_found"
        assert (await c.get("/v1/programs", headers=BOB)).json()["data"] == []
        assert (await c.get("/v1/programs/p/1")).status_code == 401
        r = await c.post("/v1/programs/p/1/release", headers=ALICE)
        assert r.status_code == 200 and r.json()["released"] is True
        assert (await c.get("/v1/programs/p/1", headers=ALICE)).status_code == 404
    for _ in range(100):
        if engine.releases:
            break
        await asyncio.sleep(0.01)
    (released, headers), = engine.releases
    assert released == "p/1"
    assert headers["x-shoal-tenant"] == "alice" and headers["authorization"] == "Bearer sk-router"


async def test_classes_endpoint_and_metrics(one: Harness) -> None:
    async with httpx.AsyncClient(base_url=one.url, headers=ALICE) as c:
        await c.post("/v1/chat/completions", json=chat("m1"))
        classes = (await c.get("/v1/programs/classes")).json()
        (coder,) = classes["data"]
        assert (coder["name"], coder["active"], coder["paused"], coder["queued"]) == ("coder", 1, 0, 0)
        assert coder["steps_per_minute"] == 1.0 and classes["error"] is None
        text = (await c.get("/metrics")).text
    assert 'shoal_router_programs{activity="acting",class="coder",state="active"} 1.0' in text
    assert 'shoal_router_program_steps_total{class="coder"} 1.0' in text
    assert f'shoal_router_program_kv_capacity_tokens{{engine="{one.servers[0].url}"}} 1600.0' in text


async def test_classes_file_reloads_live_and_a_bad_file_keeps_the_old_classes(tmp_path: Path) -> None:
    path = tmp_path / "classes.yaml"
    path.write_text("classes:\n- {name: first, model: tiny, priority: 10}\n")
    programs = {"classesFile": str(path), "reloadIntervalS": 0.05}
    async with Harness(tmp_path, [ProgramEngine("e0")], programs) as h, httpx.AsyncClient(base_url=h.url, headers=ALICE) as c:
        async def names() -> list[str]:
            return [x["name"] for x in (await c.get("/v1/programs/classes")).json()["data"]]

        assert await names() == ["first"]
        path.write_text("classes:\n- {name: second, model: tiny, priority: 90}\n")
        for _ in range(100):
            if await names() == ["second"]:
                break
            await asyncio.sleep(0.05)
        assert await names() == ["second"]
        r = await c.post("/v1/chat/completions", json=chat("x"))  # default class of the model
        assert r.status_code == 200 and h.engines[0].headers_seen[-1]["x-shoal-priority"] == "90"
        path.write_text("classes:\n- {name: Bad_Name, model: tiny}\n")
        for _ in range(100):
            body = (await c.get("/v1/programs/classes")).json()
            if body["error"]:
                break
            await asyncio.sleep(0.05)
        assert "classesFile" in body["error"] and [x["name"] for x in body["data"]] == ["second"]


async def test_a_held_call_is_admitted_when_room_frees(tmp_path: Path) -> None:
    # 10 blocks of 16 tokens: one program of ~200 tokens fills the engine past the watermarks;
    # its response asks for a tool, so its pin holds (a final answer would free the room).
    engine = ProgramEngine("e0", total_blocks=10, tool_call="bash")
    programs = {"retentionDefaultS": 60, "highWatermark": 0.9, "lowWatermark": 0.75}
    async with Harness(tmp_path, [engine], programs) as h, httpx.AsyncClient(base_url=h.url, headers=ALICE) as c:
        assert (await c.post("/v1/chat/completions", json=chat("big"))).status_code == 200
        # Another prompt (the same one would share its blocks and fit).
        held = asyncio.create_task(c.post("/v1/chat/completions", json=chat("small", "write tests " * 20)))
        for _ in range(100):
            program = h.gateway.scheduler.find("small", "alice")
            if program is not None and program.waiting:
                break
            await asyncio.sleep(0.01)
        assert not held.done() and len(engine.requests) == 1
        assert (await c.post("/v1/programs/big/release")).status_code == 200
        r = await asyncio.wait_for(held, 5)
        assert r.status_code == 200 and engine.requests[-1]["program_id"] == "small"
