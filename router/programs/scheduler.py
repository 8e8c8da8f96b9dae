"""The program scheduler: events in, decisions out. Pure logic: no I/O, no asyncio, an injected clock.

Policy (issue 9): each engine's KV working set (programs' contexts from the engine's own
usage, shared prefix blocks counted once) is held between a high and a low watermark.
Above the high one, ACTING programs are paused first, then REASONING ones are marked (paused
when their call ends), lowest class priority first, and only as many tokens as the overflow
down to the low watermark, counting what is already marked. Waiting calls are admitted by
class priority, then paused programs before new ones (their blocks may still be cached,
and finishing started programs beats starting more), then by wait (a paused program's from
its pause); nobody waits past ``max_wait_s``. A new program is admitted only where there is
room for the context programs of its class are observed to grow to, and for the growth
still expected of the programs already there (``growth.py``). A resumed program returns to the engine holding its blocks when that engine
has room; new programs get the set of engines with room and prefix affinity picks among them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.programs.decisions import (
    Admit,
    Decision,
    Wait,
)
from shoal.router.programs.placement import place
from shoal.router.programs.registry import (
    ClassForbidden,
    ContextTooLong,
    ProgramNotFound,
    UnknownClass,
)
from shoal.router.programs.rules import SchedulingRules
from shoal.router.programs.state import Call, EngineCapacity, Lifecycle, Program

__all__ = ["ClassForbidden", "ContextTooLong", "ProgramNotFound", "ProgramScheduler", "UnknownClass"]


class ProgramScheduler(SchedulingRules):
    """Owns every program's state; the router's gateway (or a simulator) is its only caller.

    Construct with ``(config, classes, clock, call_timeout_s=...)``; every event method
    returns the decisions to carry out, in order.
    """

    # events ----------------------------------------------------------------------------------------

    def call_started(
        self,
        program_id: str,
        tenant: str,
        cls: ProgramClassConfig,
        *,
        candidates: Iterable[str] | None = None,
        prompt_tokens: int = 0,
        block_hashes: Sequence[int] = (),
        block_size: int = 16,
        previous_tools: Sequence[str] = (),
    ) -> tuple[Admit | Wait, list[Decision]]:
        """A call of the program arrived. Returns its Admit or Wait, then other decisions.

        ``candidates``: engines the pool may use now; ``block_hashes``: the prompt's prefix
        block hashes (``block_size`` tokens each); ``previous_tools``: the tool names of the
        previous assistant turn, when the scheduler did not see that turn's response."""
        now = self.clock()
        key = (tenant, program_id)
        program = self._programs.get(key)
        if program is None:
            program = Program(program_id, tenant, cls, created_at=now, last_activity=now, queued_at=now)
            self._programs[key] = program
        else:
            program.cls = self._classes.get(program.cls.name, program.cls)
        limit = program.cls.max_context_tokens
        if limit is not None and prompt_tokens > limit:
            if program.turns == 0 and not program.calls and not program.waiting:
                del self._programs[key]
            raise ContextTooLong(
                f"prompt has {prompt_tokens} tokens; program class {program.cls.name!r} allows {limit}"
            )
        program.last_activity = now
        self._check_expiry_by(now + min(self.call_timeout_s, program.cls.lease_seconds))
        if not program.calls and program.last_call_end is not None:
            tools = [t for t in (program.last_tools or tuple(previous_tools)) if t not in program.tools_reported]
            if tools or not program.tools_reported:
                self.durations.observe(program.cls.name, tools, now - program.last_call_end)
            program.last_call_end = None
        call = Call(
            call_id=f"{next(self._seq):x}-{program_id}"[:200],
            seq=next(self._seq),
            arrived_at=now,
            prompt_tokens=prompt_tokens,
            block_hashes=tuple(block_hashes),
            candidates=None if candidates is None else frozenset(candidates),
        )
        program.hash_block_size = block_size
        self._call_owner[call.call_id] = key
        decisions: list[Decision] = []
        own: Admit | Wait | None = None
        if program.lifecycle is Lifecycle.ACTIVE and not program.marked:
            self._kv.expire(self._programs, now)
            engines, chosen = place(
                self._budget, self._kv.ledgers, program, call, self.config.low_watermark, sticky=True
            )
            own = self._admit(program, call, engines, chosen, now, forced=False)
        else:
            program.waiting[call.call_id] = call
        for decision in self._rebalance(now):
            if own is None and isinstance(decision, Admit) and decision.call_id == call.call_id:
                own = decision
            else:
                decisions.append(decision)
        if own is None:
            own = Wait(call.call_id, program_id, tenant)
        return own, decisions

    def call_routed(self, call_id: str, engine: str) -> list[Decision]:
        """The picker sent an admitted call to ``engine``: the program's KV is there now."""
        program = self._owner(call_id)
        if program is None or call_id not in program.calls:
            return []
        program.calls[call_id].engine = engine
        program.engine = engine
        now = self.clock()
        self._kv.sync(program, now)
        return self._rebalance(now)

    def call_finished(
        self,
        call_id: str,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        tool_calls: Sequence[str] = (),
    ) -> list[Decision]:
        """A call ended with the engine's usage and the tool names its response asked for."""
        now = self.clock()
        program = self._owner(call_id)
        call = program.calls.pop(call_id, None) if program is not None else None
        self._call_owner.pop(call_id, None)
        if program is None or call is None:
            return []
        program.turns += 1
        self.counters.step(program.cls.name, now)
        program.prompt_tokens_total += prompt_tokens
        program.cached_tokens_total += cached_tokens
        if call.seq >= program.context_seq:
            program.context_seq = call.seq
            used = prompt_tokens + completion_tokens
            program.context_tokens = used if used > 0 else max(program.context_tokens, call.prompt_tokens)
            self.context_sizes.observe(program.cls.name, used)
        program.last_tools = tuple(tool_calls)
        decisions = self._call_ended(program, call, now)
        self._kv.sync(program, now)
        return decisions + self._rebalance(now)

    def call_failed(self, call_id: str) -> list[Decision]:
        """A call ended without usage (upstream error, client gone): the program acts again."""
        now = self.clock()
        program = self._owner(call_id)
        self._call_owner.pop(call_id, None)
        if program is None:
            return []
        if call_id in program.waiting:
            del program.waiting[call_id]
            out: list[Decision] = []
        else:
            call = program.calls.pop(call_id, None)
            if call is None:
                return []
            call.retention_s = 0.0
            program.last_tools = ()
            out = self._call_ended(program, call, now)
            self._kv.sync(program, now)
        if program.turns == 0 and not program.calls and not program.waiting:
            out += self._terminate(program, "abandoned", now)  # never ran a turn: holds no slot
        return out + self._rebalance(now)

    def cancel(self, call_id: str) -> list[Decision]:
        """A waiting call was given up (its client left): forget it."""
        return self.call_failed(call_id)

    def release(self, program_id: str, tenant: str) -> list[Decision]:
        """The tenant is done with the program. Raises ProgramNotFound for any other tenant."""
        program = self._programs.get((tenant, program_id))
        if program is None:
            raise ProgramNotFound(program_id)
        now = self.clock()
        return self._terminate(program, "release", now) + self._rebalance(now)

    def tool_started(self, program_id: str, tenant: str, timeout_s: float) -> int:
        """A sandbox tool run began; returns its token for :meth:`tool_finished`."""
        program = self._programs.get((tenant, program_id))
        if program is None:
            raise ProgramNotFound(program_id)
        now = self.clock()
        program.last_activity = now
        token = max(program.tools_running, default=0) + 1
        program.tools_running[token] = now + timeout_s
        return token

    def tool_finished(
        self, program_id: str, tenant: str, tool: str, duration_s: float | None, token: int | None = None
    ) -> None:
        """A sandbox ran ``tool`` for the program: activity, and a measured duration (None: the
        run failed before it finished, so it says nothing about the tool)."""
        program = self._programs.get((tenant, program_id))
        if program is None:
            raise ProgramNotFound(program_id)
        program.last_activity = self.clock()
        if token is not None:
            program.tools_running.pop(token, None)
        if duration_s is not None:
            program.tools_reported.add(tool)
            self.durations.observe(program.cls.name, [tool], duration_s)

    def engines_changed(self, capacities: Mapping[str, EngineCapacity]) -> list[Decision]:
        """The engines' latest reported capacities (the full set: missing engines are gone)."""
        self._engines = dict(capacities)
        self._budget = self._engines
        if self.config.count_foreign_load:
            now = self.clock()
            self._kv.expire(self._programs, now)
            self._budget = {url: self._without_foreign(url, cap) for url, cap in self._engines.items()}
        return self._rebalance(self.clock())

    def tick(self) -> list[Decision]:
        """Timer: leases, aging, pin expiries."""
        return self._rebalance(self.clock())
