"""Sandboxes inside the real router app: a program's tool calls, tenant scoping, the ledger
in ``GET /v1/programs/{id}``, release and lease expiry removing the sandbox, metrics."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _fakes import Served

from shoal.router.app import create_app
from shoal.router.config import RouterConfig
from shoal.router.sandboxes.manager import SandboxManager, sandbox_key
from shoal.router.server import uvicorn_settings

sys.path.insert(0, str(Path(__file__).parents[1] / "programs"))
from program_fakes import ProgramEngine

ALICE = {"authorization": "Bearer sk-alice"}
BOB = {"authorization": "Bearer sk-bob"}
CODER = {
    "name": "coder", "model": "tiny", "leaseSeconds": 1.0,
    "sandbox": {"command": ["sh", "-c", "echo ready > state"], "network": "egress"},
    "tools": [{"name": "bash", "command": ["sh", "-c", "cat; echo; cat state"]}],
}  # fmt: skip


@pytest.fixture
async def router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, SandboxManager]]:
    monkeypatch.setenv("SHOAL_SANDBOXES", json.dumps({"stateDir": str(tmp_path / "sandboxes"), "routerId": "app",
                                                      "gcIntervalS": 0.1}))  # fmt: skip
    engine = Served(ProgramEngine("e0", tool_call="bash").app())
    await engine.start()
    (tmp_path / "keys").write_text("alice:sk-alice\nbob:sk-bob\n")
    cfg = RouterConfig.model_validate({
        "pools": [{"name": "chat", "models": ["tiny"], "endpoints": {"static": [engine.url]},
                   "tokenizer": {"source": "none"}}],
        "health": {"scrapeIntervalS": 0.05, "probeTimeoutS": 2.0},
        "auth": {"apiKeysFile": str(tmp_path / "keys")},
        "programs": {"tickS": 0.05, "classes": [CODER]},
    })  # fmt: skip
    app = create_app(cfg)
    gateway = app.services.programs
    assert gateway is not None and isinstance(gateway.sandboxes, SandboxManager)
    served = await Served(app, settings=uvicorn_settings(cfg)).start()
    for _ in range(300):
        if gateway.scheduler.engines():
            break
        await asyncio.sleep(0.02)
    yield served.url, gateway.sandboxes
    await served.stop()
    await engine.stop()
    assert list((tmp_path / "sandboxes" / "app").iterdir()) == []  # shutdown removes every sandbox


async def all_gone(manager: SandboxManager, within_s: float) -> None:
    for _ in range(int(within_s / 0.05)):
        if not manager.programs() and not manager.backend.list_existing():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"sandboxes left: {manager.programs()} {manager.backend.list_existing()}")


async def chat(client: httpx.AsyncClient, program_id: str, headers: dict[str, str]) -> None:
    body: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "program_id": program_id}
    r = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text


async def test_tool_calls_ledger_release(router: tuple[str, SandboxManager]) -> None:
    url, manager = router
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/v1/programs/p1/tools/bash", json={"arguments": {}}, headers=ALICE)
        assert r.status_code == 404 and r.json()["error"]["code"] == "program_not_found"  # no LLM call yet
        await chat(client, "p1", ALICE)
        r = await client.post("/v1/programs/p1/tools/bash", json={"arguments": {"cmd": "ls"}}, headers=ALICE)
        assert r.status_code == 200, r.text
        assert r.json()["stdout"] == '{"cmd":"ls"}\nready\n' and r.json()["exit_code"] == 0
        r = await client.post("/v1/programs/p1/tools/bash", json={}, headers=BOB)
        assert r.status_code == 404  # another tenant's program
        r = await client.get("/v1/programs/p1", headers=ALICE)
        ledger = r.json()["sandbox"]
        assert ledger["sandboxes"] == 1 and ledger["tool_calls"] == 1 and ledger["disk_bytes"] > 0
        metrics = (await client.get("/metrics")).text
        assert 'shoal_router_tool_calls_total{outcome="ok",program_class="coder",tool="bash"} 1.0' in metrics
        r = await client.post("/v1/programs/p1/release", headers=ALICE)
        assert r.status_code == 200, r.text
        await all_gone(manager, 2.0)


async def test_lease_expiry_removes_the_sandbox(router: tuple[str, SandboxManager]) -> None:
    url, manager = router
    async with httpx.AsyncClient(base_url=url) as client:
        await chat(client, "p2", ALICE)
        r = await client.post("/v1/programs/p2/tools/bash", json={}, headers=ALICE)
        assert r.status_code == 200 and manager.programs() == [sandbox_key("alice", "p2")]
        await all_gone(manager, 10.0)  # leaseSeconds 1: the scheduler terminates the idle program


async def test_two_tenants_with_one_program_id_get_two_sandboxes(router: tuple[str, SandboxManager]) -> None:
    """Program ids are unique per tenant only: the same id must never share a sandbox (regression:
    the manager was keyed by the id alone, so Bob's calls ran in Alice's directory)."""
    url, manager = router
    write: dict[str, Any] = {"arguments": {}}
    async with httpx.AsyncClient(base_url=url) as client:
        await chat(client, "shared-id", ALICE)
        await chat(client, "shared-id", BOB)
        r = await client.post("/v1/programs/shared-id/tools/bash", json=write, headers=ALICE)
        assert r.status_code == 200, r.text
        assert manager.programs() == [sandbox_key("alice", "shared-id")]
        r = await client.post("/v1/programs/shared-id/tools/bash", json=write, headers=BOB)
        assert r.status_code == 200, r.text
        assert sorted(manager.programs()) == sorted([sandbox_key("alice", "shared-id"), sandbox_key("bob", "shared-id")])
        assert (await client.post("/v1/programs/shared-id/release", headers=BOB)).status_code == 200
        for _ in range(100):
            if manager.programs() == [sandbox_key("alice", "shared-id")]:
                break
            await asyncio.sleep(0.05)
        assert manager.programs() == [sandbox_key("alice", "shared-id")]  # Alice's sandbox is untouched
        assert (await client.post("/v1/programs/shared-id/release", headers=ALICE)).status_code == 200
        await all_gone(manager, 2.0)
