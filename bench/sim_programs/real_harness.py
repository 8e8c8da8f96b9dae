"""REAL engines (not simulated): a simulator policy run as the proxy in front of real engines.

ThunderAgent has no proxy of its own in this repo, so for the real-engine run its policy
object (``policies/thunderagent.py``, the same one the simulator runs) is driven here: each
client call becomes a policy ``Call`` (its JSON body length is what ThunderAgent's
chars/token estimate reads), ``dispatch`` posts the body straight to the chosen engine,
the response's usage comes back through ``on_call_done``, and the policy's timer runs on
the wall clock. Engines are reached without the router, so its overhead is not counted
for this policy.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import httpx

from bench.sim_programs.engine import EngineSpec, ProgramKV, SimCall, SimEngine
from bench.sim_programs.fleet import Fleet
from bench.sim_programs.policy import Call, Policy


class _EngineView:
    """What a policy may read of a real engine here: its KV pool size (ThunderAgent reads it once)."""

    def __init__(self, url: str, spec: EngineSpec) -> None:
        self.name = url
        self.spec = spec


class RealHarness:
    """Plays the fleet's role for one policy: calls in, HTTP posts to engines out."""

    def __init__(self, policy: Policy, urls: list[str], spec: EngineSpec, shared_tokens: int) -> None:
        self.policy = policy
        self.engines = cast(list[SimEngine], [_EngineView(u, spec) for u in urls])
        self.shared_tokens = shared_tokens
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()
        self._http = httpx.AsyncClient(timeout=600)
        self._bodies: dict[int, dict[str, Any]] = {}
        self._done: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.paused_at: dict[int, float] = {}
        self.pauses: list[float] = []
        policy.bind(cast(Fleet, self))

    @property
    def now(self) -> float:
        return self._loop.time() - self._start

    async def run_timer(self) -> None:
        tick = self.policy.tick_s
        if not tick:
            return
        while True:
            await asyncio.sleep(tick)
            self.policy.on_tick(self.now)

    async def call(self, program: int, turn: int, body: dict[str, Any]) -> dict[str, Any]:
        """One LLM call of a program through the policy; returns the engine's response."""
        call = Call(program, turn, 0, len(json.dumps(body)), None, arrived_at=self.now)
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._bodies[program], self._done[program] = body, future
        self.policy.on_call(self.now, call)
        return await future

    def release(self, program: int) -> None:
        self.policy.on_release(self.now, program)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._http.aclose()

    # what policies call --------------------------------------------------------------------------

    def dispatch(self, call: Call, engine: int, queue_key: float = 0.0) -> None:
        call.dispatched_at = self.now
        call.engine = engine
        task = self._loop.create_task(self._post(call, engine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def note_pause(self, program: int) -> None:
        self.paused_at.setdefault(program, self.now)

    def note_resume(self, program: int) -> None:
        started = self.paused_at.pop(program, None)
        if started is not None:
            self.pauses.append(self.now - started)

    def unpin(self, program: int, engine: int | None = None) -> None:
        """Nothing is pinned: the policies run here send no retention."""

    async def _post(self, call: Call, engine: int) -> None:
        body = self._bodies.pop(call.program)
        future = self._done.pop(call.program)
        try:
            resp = await self._http.post(self.engines[engine].name + "/v1/chat/completions", json=body)
            resp.raise_for_status()
            data = resp.json()
        except Exception as exc:  # the client sees the failure; the policy's state stays as its code leaves it
            if not future.done():
                future.set_exception(exc)
            return
        usage = data["usage"]
        call.prompt_tokens = usage["prompt_tokens"]
        call.sim = SimCall(-1, ProgramKV(call.program), usage["prompt_tokens"], usage["completion_tokens"], 0)
        call.sim.hit_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        call.next_tool = "tool"
        self.policy.on_call_done(self.now, call)
        if not future.done():
            future.set_result(data)
