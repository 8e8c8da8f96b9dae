"""The scheduler's rules: admission, pause and resume, leases and pins, run after every event.

Kept apart from the event API (``scheduler.py``); see there for the policy in words.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import replace

from shoal.router.programs.decisions import (
    Admit,
    Decision,
    Pause,
    Prewarm,
    Reject,
    Resume,
    Terminate,
    Unpin,
)
from shoal.router.programs.leases import expiry_check_time, lease_expired, lost_calls
from shoal.router.programs.placement import headroom, least_extra, place, reservation, resume_target
from shoal.router.programs.pressure import plan_relief
from shoal.router.programs.registry import ProgramRegistry
from shoal.router.programs.retention import ANY_TOOL, NO_TOOL
from shoal.router.programs.state import Call, EngineCapacity, Lifecycle, Program

RESUME_SLACK_S = 2.0
"""A program resumed between calls keeps its room this long past its tool's expected end
(a late call still finds it; one later still is admitted anyway, as an active program)."""


def _waiting_since(program: Program, call: Call) -> float:
    """A paused program's call queues from the pause, not from its own arrival: the oldest
    pause is resumed first, which bounds the pauses' tail."""
    if program.paused_at is not None:
        return min(program.paused_at, call.arrived_at)
    return call.arrived_at


class SchedulingRules(ProgramRegistry):
    """The decisions behind the events: shared by :class:`ProgramScheduler` through inheritance."""

    def _call_ended(self, program: Program, call: Call, now: float) -> list[Decision]:
        program.last_activity = now
        program.last_call_end = now
        program.tools_reported.clear()
        if program.calls:
            return []
        engine = call.engine or program.engine
        if program.marked and engine is not None:
            return [self._pause(program, engine, now)]
        program.pinned_until = max(program.pinned_until, now + call.retention_s)
        learned = self.retention.ttl_for_tools(self.durations, program.cls.name, program.last_tools)
        if learned is None and not program.last_tools:
            learned = 0.0  # a final answer: until a gap after one is seen, the program is done
        if learned is not None and now + learned < program.pinned_until:
            program.pinned_until = now + learned
            if call.retention_s > 0 and engine is not None:
                if learned == 0:
                    return [Unpin(program.program_id, program.tenant, engine)]
                # the engine pins for the TTL asked with the call: drop it when ours ends
                heapq.heappush(self._unpins, (program.pinned_until, next(self._seq), program.key))
        return []

    def _unpin_shortened(self, now: float) -> list[Decision]:
        """Unpin on the engine the pins whose learned TTL ran out before the one the call asked."""
        out: list[Decision] = []
        while self._unpins and self._unpins[0][0] <= now:
            until, _, key = heapq.heappop(self._unpins)
            program = self._programs.get(key)
            if (
                program is not None and not program.calls and program.engine is not None
                and program.lifecycle is Lifecycle.ACTIVE and program.pinned_until == until
            ):
                out.append(Unpin(program.program_id, program.tenant, program.engine))
        return out

    def _admit(
        self, program: Program, call: Call, engines: frozenset[str] | None, chosen: str | None, now: float,
        *, forced: bool,
    ) -> Admit:
        resumed = program.lifecycle is Lifecycle.PAUSED
        if resumed:
            self._end_pause(program, now)
        if forced:
            self.counters.forced_admissions[program.cls.name] += 1
        self.counters.longest_wait_s = max(self.counters.longest_wait_s, now - call.arrived_at)
        program.waiting.pop(call.call_id, None)
        program.lifecycle = Lifecycle.ACTIVE
        program.paused_at = program.queued_at = None
        program.context_tokens = max(program.context_tokens, call.prompt_tokens)
        if call.block_hashes:
            program.block_hashes = call.block_hashes
        if chosen is not None:
            program.engine = chosen
        call.started_at = now
        call.engine = chosen if engines is not None and len(engines) == 1 else None
        call.retention_s = self._retention_for(program)
        program.calls[call.call_id] = call
        self._kv.sync(program, now)
        return Admit(
            call.call_id, program.program_id, program.tenant, engines, call.retention_s,
            program.cls.priority, resumed=resumed, forced=forced,
        )

    def _end_pause(self, program: Program, now: float) -> None:
        if program.paused_at is not None:
            self.counters.resumes[program.cls.name] += 1
            self.counters.pause_seconds.append((program.cls.name, now - program.paused_at))
        program.lifecycle = Lifecycle.ACTIVE
        program.paused_at = None

    def _without_foreign(self, url: str, cap: EngineCapacity) -> EngineCapacity:
        """The engine's capacity less the KV in use there that these programs do not explain
        (other router replicas' programs, one-off requests). A report lags our own changes (a
        program that just left still shows), so foreign load counts once two reports in a row
        show it: a one-report spike never pauses anyone."""
        ledger = self._kv.ledgers.get(url)
        ours = ledger.working_set if ledger is not None else 0
        used = (cap.total_blocks - cap.free_blocks) * cap.block_size
        foreign_now = max(0, used - ours) // cap.block_size
        foreign = min(foreign_now, self._foreign_blocks.get(url, 0))
        self._foreign_blocks[url] = foreign_now
        return replace(cap, total_blocks=max(1, cap.total_blocks - foreign))

    def _expected_idle(self, program: Program, now: float) -> float:
        """Seconds until an acting program's next call, from its tools' observed durations."""
        elapsed = now - (program.last_call_end if program.last_call_end is not None else program.last_activity)
        tools = [t for t in program.last_tools if self.durations.count(program.cls.name, t)] or [ANY_TOOL]
        return max(self.retention.remaining(self.durations.samples(program.cls.name, t), elapsed) for t in tools)

    def _overdue(self, program: Program, now: float) -> bool:
        """Its tools have run longer than every observed run of them: likely gone (crashed)."""
        elapsed = now - (program.last_call_end if program.last_call_end is not None else program.last_activity)
        tools = [t for t in program.last_tools if self.durations.count(program.cls.name, t)] or [ANY_TOOL]
        seen = [self.durations.samples(program.cls.name, t) for t in tools]
        return all(len(s) >= self.retention.min_samples and max(s) < elapsed for s in seen)

    def _retention_for(self, program: Program) -> float:
        """TTL asked with a call, before its tools are known: the class's pooled gaps."""
        return self.retention.ttl(self.durations.samples(program.cls.name, ANY_TOOL))

    def _pause(self, program: Program, engine: str, now: float) -> Pause:
        program.lifecycle = Lifecycle.PAUSED
        program.paused_at = now
        program.marked = False
        program.pinned_until = 0.0
        self._kv.sync(program, now)
        self.counters.pauses[program.cls.name] += 1
        return Pause(program.program_id, program.tenant, engine)

    def _terminate(self, program: Program, reason: str, now: float) -> list[Decision]:
        del self._programs[program.key]
        self._kv.forget(program)
        out: list[Decision] = []
        for call_id in [*program.calls, *program.waiting]:
            self._call_owner.pop(call_id, None)
        for call_id in program.waiting:
            out.append(Reject(call_id, program.program_id, program.tenant, f"program {reason}"))
        program.calls.clear()
        program.waiting.clear()
        program.lifecycle = Lifecycle.TERMINATED
        self.counters.terminations[(program.cls.name, reason)] += 1
        if reason == "lease":
            self.counters.lease_expiries[program.cls.name] += 1
        out.append(Terminate(program.program_id, program.tenant, program.engine, reason))
        return out

    def _rebalance(self, now: float) -> list[Decision]:
        decisions = self._expire(now)
        self._kv.expire(self._programs, now)
        decisions += self._unpin_shortened(now)
        decisions += self._relieve_pressure(now)
        admitted, reserved = self._admit_waiting(now)
        return decisions + admitted + self._resume_acting(now, reserved)

    def _resume_acting(self, now: float, reserved: Mapping[str, int]) -> list[Decision]:
        """Paused programs between calls get room back as soon as an engine has it under the
        low watermark, so their next call runs at once: their context counts there again for
        as long as their tool is expected to run. By class priority, then longest paused first
        (the pauses' tail is what clients feel). Not resumed: a program whose last response
        asked for no tool (a final answer) unless gaps after such responses were seen, and one
        whose tool ran longer than every observed run of it (likely gone). Engines holding
        room for a waiting call are left to it; a program paused this round stays paused."""
        free = {url: cap for url, cap in self._budget.items() if url not in reserved}
        if not free or headroom(free, self._kv.ledgers, self.config.low_watermark, {}) <= 0:
            return []  # the common case under pressure: no look at the paused programs
        paused = [
            p for p in self._programs.values()
            if p.lifecycle is Lifecycle.PAUSED and not p.waiting and not p.calls
            and p.paused_at is not None and p.paused_at < now
            and (p.last_tools or self.durations.count(p.cls.name, NO_TOOL) >= self.retention.min_samples)
            and not self._overdue(p, now)
        ]
        out: list[Decision] = []
        for program in sorted(paused, key=lambda p: (-p.cls.priority, p.paused_at or 0.0, p.program_id)):
            engine = resume_target(free, self._kv.ledgers, program, self.config.low_watermark)
            if engine is None:
                continue
            hold = min(self._expected_idle(program, now), self.retention.max_s) + RESUME_SLACK_S
            self._end_pause(program, now)
            program.engine = engine
            program.pinned_until = now + hold
            self._kv.sync(program, now)
            out.append(Resume(program.program_id, program.tenant, engine))
        return out

    def _expire(self, now: float) -> list[Decision]:
        if not self._expiry_due(now):
            return []
        out: list[Decision] = []
        next_check: float = float("inf")
        for program in list(self._programs.values()):
            for call_id in lost_calls(program, now, self.call_timeout_s):
                call = program.calls.pop(call_id)
                self._call_owner.pop(call_id, None)
                timed_out_at = (call.started_at or call.arrived_at) + self.call_timeout_s
                program.last_activity = max(program.last_activity, timed_out_at)
                if not program.calls and program.marked and program.engine is not None:
                    out.append(self._pause(program, program.engine, now))
                self._kv.sync(program, now)
            if lease_expired(program, now, self.call_timeout_s):
                out += self._terminate(program, "lease", now)
            else:
                next_check = min(next_check, expiry_check_time(program, now, self.call_timeout_s))
        self._expiry_checked(next_check)
        return out

    def _relieve_pressure(self, now: float) -> list[Decision]:
        out: list[Decision] = []
        for url, ledger in self._kv.ledgers.items():
            cap = self._budget.get(url)
            if cap is None or cap.total_blocks <= 0:
                continue
            relief = plan_relief(
                ledger, cap.total_tokens, self.config.high_watermark, self.config.low_watermark,
                lambda p: self._expected_idle(p, now),
            )
            out.extend(self._pause(program, url, now) for program in relief.pause)
        return out

    def _admit_waiting(self, now: float) -> tuple[list[Decision], dict[str, int]]:
        """Admit the waiting calls that fit; also returns the room held per engine for the
        first call still blocked there."""
        ledgers = self._kv.ledgers
        waiting = sorted(
            ((p, c) for p in self._programs.values() for c in p.waiting.values()),
            key=lambda pc: (-pc[0].cls.priority, pc[0].turns == 0, _waiting_since(pc[0], pc[1]), pc[1].seq),
        )
        active_by_class: dict[str, int] = {}
        for p in self._programs.values():
            if p.lifecycle is Lifecycle.ACTIVE:
                active_by_class[p.cls.name] = active_by_class.get(p.cls.name, 0) + 1
        out: list[Decision] = []
        still_waiting: list[Program] = []
        reserved: dict[str, int] = {}  # room held for the first blocked call per engine: no starvation
        room: float | None = None  # headroom(), recomputed after anything that changes it
        growth: dict[str, int] | None = None  # reserved + the growth expected of the programs there
        room_new = 0.0
        new_held: set[frozenset[str] | None] = set()  # candidate sets whose new programs found their engine held
        for program, call in waiting:
            if call.call_id not in program.waiting:
                continue
            forced = now - call.arrived_at >= self.config.max_wait_s
            if program.lifecycle is Lifecycle.ACTIVE and program.marked and not forced:
                still_waiting.append(program)
                continue  # paused once its call in flight ends, then resumed from here
            if program.lifecycle is Lifecycle.ACTIVE and not program.marked:
                engines, chosen = place(self._budget, ledgers, program, call, self.config.low_watermark, sticky=True)
            else:
                slots_free = active_by_class.get(program.cls.name, 0) < program.cls.max_concurrent_programs
                if not slots_free and not forced:
                    still_waiting.append(program)
                    continue
                grow_to = self.context_sizes.expected(program.cls.name) if program.lifecycle is Lifecycle.QUEUED else 0
                if grow_to and not forced:
                    if growth is None:
                        growth = self._growth_reserve(reserved)
                        room_new = headroom(self._budget, ledgers, self.config.low_watermark, growth)
                    kept, space = growth, room_new
                else:
                    if room is None:
                        room = headroom(self._budget, ledgers, self.config.low_watermark, reserved)
                    kept, space = reserved, room
                if not forced and self._budget and least_extra(program, call, grow_to) >= space + 1:
                    engines, chosen = frozenset(), None  # cannot fit anywhere: no need to look
                else:
                    engines, chosen = place(
                        self._budget, ledgers, program, call, self.config.low_watermark, force=forced,
                        reserved=kept, grow_to=grow_to,
                    )
                if engines is not None and not engines:
                    still_waiting.append(program)
                    new = program.engine is None
                    if len(reserved) < len(self._budget) and not (new and call.candidates in new_held):
                        hold = reservation(self._budget, ledgers, program, call)
                        if hold is not None and hold[0] not in reserved:
                            reserved[hold[0]] = hold[1]
                            room = growth = None
                        elif new:  # the next new programs would pick the same engine until room changes
                            new_held.add(call.candidates)
                    continue
                active_by_class[program.cls.name] = active_by_class.get(program.cls.name, 0) + 1
            program.marked = False
            out.append(self._admit(program, call, engines, chosen, now, forced=forced))
            room = growth = None
            new_held.clear()
        held = [c.arrived_at for p in still_waiting for c in p.waiting.values()]
        self._aging_at = min(held) + self.config.max_wait_s if held else None
        depth = self.config.prewarm_queue_depth
        for program in {p.key: p for p in still_waiting}.values():
            if depth <= 0:
                break
            depth -= 1
            if not program.prewarmed:
                program.prewarmed = True
                out.append(Prewarm(program.program_id, program.tenant, program.cls.name))
        return out, reserved

    def _growth_reserve(self, reserved: Mapping[str, int]) -> dict[str, int]:
        """Per engine: the room held for waiting calls plus what the programs counted there are
        expected to grow by (to their class's mean context), which new programs must leave free."""
        out = dict(reserved)
        for url, ledger in self._kv.ledgers.items():
            grow = sum(
                max(0, self.context_sizes.expected(p.cls.name) - p.context_tokens) for p in ledger.members.values()
            )
            if grow:
                out[url] = out.get(url, 0) + grow
        return out
