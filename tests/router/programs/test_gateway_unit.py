"""The gateway's held calls, without HTTP: cancellation and a stuck timer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from shoal.router.errors import RouterError
from shoal.router.openai_request import parse_request
from shoal.router.programs.config import ProgramsConfig
from shoal.router.programs.gateway import ProgramGateway
from shoal.router.programs.state import EngineCapacity


@dataclass
class FakeState:
    url: str
    kv_capacity: EngineCapacity | None
    breaker: Any = field(default_factory=lambda: SimpleNamespace(available=True))


class FakeEndpoints:
    def __init__(self, states: list[FakeState]) -> None:
        self.states = states

    def __iter__(self) -> Any:
        return iter(self.states)

    def candidates(self) -> list[Any]:
        return [SimpleNamespace(url=s.url, healthy=True) for s in self.states]


def _pool(blocks: int) -> Any:
    state = FakeState("http://e0", EngineCapacity(total_blocks=blocks, block_size=16))
    return SimpleNamespace(name="p", endpoints=FakeEndpoints([state]), hasher=SimpleNamespace(block_size=16))


def _request(program_id: str, words: int) -> Any:
    body = f'{{"model": "m", "messages": [{{"role": "user", "content": "{"w " * words}"}}], "program_id": "{program_id}"}}'
    return parse_request("chat", body.encode(), {})


async def _gateway(cfg: ProgramsConfig) -> tuple[ProgramGateway, Any, httpx.AsyncClient]:
    pool = _pool(10)  # 160 tokens
    client = httpx.AsyncClient()
    gateway = ProgramGateway(cfg, pools={"p": pool}, client=client, upstream_auth={}, call_timeout_s=60)
    return gateway, pool, client


async def test_a_held_call_whose_client_leaves_is_forgotten() -> None:
    gateway, pool, client = await _gateway(ProgramsConfig(max_wait_s=30))
    async with client:
        first = await gateway.before_call(_request("big", 400), {}, "t", pool, None)
        assert first is not None
        task = asyncio.create_task(gateway.before_call(_request("small", 100), {}, "t", pool, None))
        await asyncio.sleep(0.05)
        assert not task.done() and gateway.scheduler.find("small", "t") is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gateway.scheduler.find("small", "t") is None  # it never ran a turn: gone
        assert gateway._waiters == {}


async def test_a_call_held_past_the_bound_gets_503_not_500() -> None:
    gateway, pool, client = await _gateway(ProgramsConfig(max_wait_s=0.01, tick_s=0.01))
    async with client:  # the timer is not started: nothing admits the held call
        await gateway.before_call(_request("big", 400), {}, "t", pool, None)
        with pytest.raises(RouterError) as err:
            await gateway.before_call(_request("small", 100), {}, "t", pool, None)
    assert err.value.status == 503 and err.value.code == "program_held"
