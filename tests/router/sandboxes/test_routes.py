"""The tool API over HTTP: results, tenant scoping, 404s, bad input, lowered limits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
import pytest
from _sandbox_helpers import make_class, shell_tool
from fastapi import FastAPI

from shoal.router.errors import unauthorized
from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.local import LocalBackend
from shoal.router.sandboxes.manager import SandboxManager, sandbox_key
from shoal.router.sandboxes.routes import mount_tool_routes
from shoal.router.sandboxes.settings import SandboxSettings

CLS = make_class(
    tools=[
        shell_tool("echo", "cat"),
        shell_tool("fail", "echo broken >&2; exit 3"),
        shell_tool("slow", "sleep 5; echo late", timeoutS=10),
        shell_tool("loud", "head -c 10000 /dev/zero | tr '\\0' a", maxOutputBytes=4096),
    ],
    network="egress",
)
NO_TOOLS = ProgramClassConfig(name="chat", model="m")


class FakeGateway:
    """Programs owned by tenants; records tool durations like the scheduler would."""

    def __init__(self) -> None:
        self.programs = {("p1", "alice"): CLS, ("p2", "alice"): NO_TOOLS}
        self.finished: list[tuple[str, str, float]] = []
        self.running: set[int] = set()

    async def lookup(self, program_id: str, tenant: str) -> ProgramClassConfig | None:
        return self.programs.get((program_id, tenant))

    def tool_started(self, program_id: str, tenant: str, timeout_s: float) -> int | None:
        token = len(self.running) + 1
        self.running.add(token)
        return token

    def tool_finished(
        self, program_id: str, tool: str, duration_s: float | None, tenant: str, token: int | None = None
    ) -> None:
        assert tenant == "alice"
        assert token in self.running, "every run that started ends"
        self.running.discard(token)
        if duration_s is not None:
            self.finished.append((program_id, tool, duration_s))


def authenticate(headers: Mapping[str, str]) -> str | None:
    key = headers.get("authorization", "").removeprefix("Bearer ")
    if key not in ("alice-key", "bob-key"):
        raise unauthorized()
    return key.removesuffix("-key")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FakeGateway, SandboxManager]]:
    settings = SandboxSettings(state_dir=str(tmp_path), router_id="routes")
    manager = SandboxManager(LocalBackend(settings), settings)
    gateway = FakeGateway()
    app = FastAPI()
    mount_tool_routes(app, manager, gateway, authenticate, max_body_bytes=2048)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router",
                                 headers={"Authorization": "Bearer alice-key"}) as c:  # fmt: skip
        yield c, gateway, manager
    await manager.stop()


async def test_result_and_failing_tool_is_200(client: tuple[httpx.AsyncClient, FakeGateway, SandboxManager]) -> None:
    c, gateway, manager = client
    r = await c.post("/v1/programs/p1/tools/echo", json={"arguments": {"path": "a.txt"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stdout"] == '{"path":"a.txt"}' and body["exit_code"] == 0 and body["timed_out"] is False
    assert set(body) == {"stdout", "stderr", "stdout_truncated", "stderr_truncated", "exit_code", "duration_s",
                         "timed_out"}  # fmt: skip
    r = await c.post("/v1/programs/p1/tools/echo", json={"arguments": '{"n": 1}'})  # OpenAI's JSON text
    assert r.json()["stdout"] == '{"n": 1}'
    r = await c.post("/v1/programs/p1/tools/fail", json={})
    assert r.status_code == 200 and r.json()["exit_code"] == 3 and r.json()["stderr"] == "broken\n"
    assert [(p, t) for p, t, _ in gateway.finished] == [("p1", "echo"), ("p1", "echo"), ("p1", "fail")]
    assert all(d > 0 for _, _, d in gateway.finished)
    assert (await manager.ledger(sandbox_key("alice", "p1")) or {})["tool_calls"] == 3


async def test_limits_are_lowered_never_raised(client: tuple[httpx.AsyncClient, FakeGateway, SandboxManager]) -> None:
    c, _, _ = client
    r = await c.post("/v1/programs/p1/tools/slow", json={"timeout_s": 0.5})
    assert r.status_code == 200 and r.json()["timed_out"] is True and r.json()["duration_s"] < 3
    r = await c.post("/v1/programs/p1/tools/loud", json={"max_output_bytes": 100_000})
    assert len(r.json()["stdout"]) == 4096 and r.json()["stdout_truncated"] is True
    r = await c.post("/v1/programs/p1/tools/loud", json={"max_output_bytes": 10})
    assert r.json()["stdout"] == "a" * 10


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        ("/v1/programs/nope/tools/echo", {}, 404, "program_not_found"),
        ("/v1/programs/p1/tools/echo", {"Authorization": "Bearer bob-key"}, 404, "program_not_found"),
        ("/v1/programs/p1/tools/nope", {}, 404, "tool_not_found"),
        ("/v1/programs/p2/tools/echo", {}, 404, "tool_not_found"),
        ("/v1/programs/p1/tools/echo", {"Authorization": "Bearer wrong"}, 401, "invalid_api_key"),
    ],
)
async def test_unknown_or_foreign_is_404(
    client: tuple[httpx.AsyncClient, FakeGateway, SandboxManager], path: str, headers: dict[str, str], status: int,
    code: str,
) -> None:  # fmt: skip
    c, _, manager = client
    r = await c.post(path, json={}, headers=headers)
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert manager.programs() == []  # nothing was started for it


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "Invalid JSON"),
        (b'{"arguments": "{broken"}', "arguments: not valid JSON text"),
        (b'{"arguments": {}, "timeout": 1}', "timeout: Extra inputs"),
        (b'{"timeout_s": -1}', "timeout_s: Input should be greater than 0"),
        (b'{"arguments": "' + b"x" * 4000 + b'"}', "larger than 2048 bytes"),
    ],
)
async def test_bad_input_is_4xx(
    client: tuple[httpx.AsyncClient, FakeGateway, SandboxManager], content: bytes, message: str
) -> None:
    c, _, _ = client
    r = await c.post("/v1/programs/p1/tools/echo", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 413) and message in r.json()["error"]["message"], r.text


async def test_an_internal_failure_is_an_openai_style_500(
    client: tuple[httpx.AsyncClient, FakeGateway, SandboxManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    c, _, manager = client

    def broken(*args: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(manager.backend, "run", broken)
    r = await c.post("/v1/programs/p1/tools/echo", json={})
    assert r.status_code == 500 and r.json()["error"]["code"] == "sandbox_error"
    assert "disk on fire" not in r.text  # internals stay in the log
