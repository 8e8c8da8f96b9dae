"""Shoal: the router's real ``ProgramScheduler`` driven by the simulated fleet.

This adapter only translates: fleet events become scheduler events with the simulated
clock injected, and the scheduler's decisions are carried out on the fleet the way the
router's proxy carries them out (Admit: the picker chooses among the allowed engines by
prefix + load and the call carries the retention TTL; Wait: the call is held; Pause /
Unpin / Terminate: drop the program's pin there; Resume: the pause ends). Engine capacities are refreshed at the
router's scrape interval. No scheduling logic lives here.
"""

from __future__ import annotations

from bench.sim_programs.policy import Call, Policy, prefix_load_pick
from shoal.router.programs.config import ProgramClassConfig, ProgramsConfig
from shoal.router.programs.decisions import Admit, Decision, Pause, Reject, Resume, Terminate, Unpin, Wait
from shoal.router.programs.scheduler import ProgramScheduler
from shoal.router.programs.state import EngineCapacity

TENANT = "bench"
SCRAPE_S = 0.5
TIMER_SLACK_S = 0.001
"""A deadline timer fires this long after the deadline (as a real timer does: never early)."""
"""The router's default ``health.scrapeIntervalS``: how often engine capacities are refreshed."""


class ShoalPolicy(Policy):
    name = "shoal"

    def __init__(self, config: ProgramsConfig | None = None, lease_s: float = 600.0) -> None:
        self.config = config or ProgramsConfig()
        self.tick_s = min(self.config.tick_s, SCRAPE_S)
        # the router's class for a model without an AgentProgram: no cap on concurrent programs
        self.cls = ProgramClassConfig(name="default", model="sim", max_concurrent_programs=100_000,
                                      lease_seconds=lease_s)
        self.scheduler: ProgramScheduler | None = None
        self._calls: dict[str, Call] = {}
        self._by_program: dict[int, str] = {}
        self._retention: dict[int, float] = {}
        self.rejected = 0
        self._timer_at = 0.0

    @property
    def sched(self) -> ProgramScheduler:
        if self.scheduler is None:
            self.scheduler = ProgramScheduler(self.config, [self.cls], clock=lambda: self.fleet.now)
            self._refresh()
        return self.scheduler

    def _names(self) -> list[str]:
        return [e.name for e in self.engines]

    def _refresh(self) -> list[Decision]:
        caps = {
            e.name: EngineCapacity(
                # as the engine's shoal: metrics say it: free includes the cached (reusable) blocks
                total_blocks=e.spec.num_blocks, free_blocks=e.free_blocks,
                cached_blocks=e.cached_blocks, pinned_blocks=e.pinned_blocks, block_size=e.spec.block_size,
            )
            for e in self.engines
        }
        assert self.scheduler is not None
        return self.scheduler.engines_changed(caps)

    # fleet events --------------------------------------------------------------------------------

    def on_call(self, now: float, call: Call) -> None:
        probe = self.fleet.probe(call)
        bs = self.engines[0].spec.block_size
        hashes = [probe.block_hash(i, bs) for i in range(call.prompt_tokens // bs)]
        own, others = self.sched.call_started(
            str(call.program), TENANT, self.cls, candidates=self._names(), prompt_tokens=call.prompt_tokens,
            block_hashes=hashes, block_size=bs, previous_tools=[call.prev_tool] if call.prev_tool else [],
        )
        self._calls[own.call_id] = call
        self._by_program[call.program] = own.call_id
        self._apply([own, *others])

    def retention_s(self, now: float, call: Call) -> float | None:
        ttl = self._retention.pop(call.program, 0.0)
        return ttl or None

    def on_call_done(self, now: float, call: Call) -> None:
        call_id = self._by_program.pop(call.program)
        self._calls.pop(call_id, None)
        self._apply(self.sched.call_finished(
            call_id, prompt_tokens=call.usage_prompt, completion_tokens=call.usage_completion,
            cached_tokens=call.usage_cached, tool_calls=[call.next_tool] if call.next_tool else [],
        ))

    def on_release(self, now: float, program: int) -> None:
        self._apply(self.sched.release(str(program), TENANT))

    def on_tick(self, now: float) -> None:
        self.sched  # noqa: B018 (builds the scheduler on the first tick)
        self._apply(self._refresh())

    def report(self) -> dict[str, float]:
        c = self.sched.counters
        return {
            "pauses": float(sum(c.pauses.values())),
            "resumes": float(sum(c.resumes.values())),
            "forced admissions": float(sum(c.forced_admissions.values())),
            "lease expiries": float(sum(c.lease_expiries.values())),
            "longest wait (s)": c.longest_wait_s,
        }

    def _arm_timer(self) -> None:
        """Wake the scheduler at its next deadline (aging, lease, pin expiry) between ticks."""
        deadline = self.sched.next_deadline()
        now = self.fleet.now
        if deadline is None:
            return
        deadline += TIMER_SLACK_S
        if deadline > now and (self._timer_at <= now or deadline < self._timer_at):
            self._timer_at = deadline
            self.fleet.schedule_at(deadline, "timer")

    # decisions -----------------------------------------------------------------------------------

    def _engine_index(self, name: str) -> int:
        return self._names().index(name)

    def _apply(self, decisions: list[Decision]) -> None:
        self._carry_out(decisions)
        self._arm_timer()

    def _carry_out(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Admit):
                self._admit(decision)
            elif isinstance(decision, Wait):
                continue
            elif isinstance(decision, Pause):
                self.fleet.unpin(int(decision.program_id), self._engine_index(decision.engine))
                self.fleet.note_pause(int(decision.program_id))
            elif isinstance(decision, Resume):
                self.fleet.note_resume(int(decision.program_id))
            elif isinstance(decision, Unpin):
                self.fleet.unpin(int(decision.program_id), self._engine_index(decision.engine))
            elif isinstance(decision, Terminate):
                self.fleet.unpin(int(decision.program_id))
            elif isinstance(decision, Reject):
                call = self._calls.pop(decision.call_id, None)
                if call is not None:
                    self.rejected += 1
                    self.fleet.give_up(call.program)

    def _admit(self, decision: Admit) -> None:
        call = self._calls.get(decision.call_id)
        if call is None:
            return
        names = self._names()
        allowed = [names.index(n) for n in decision.engines] if decision.engines is not None else None
        engine = prefix_load_pick(self, call, sorted(allowed) if allowed else None)
        if decision.resumed:
            self.fleet.note_resume(call.program)
        self._retention[call.program] = decision.retention_s
        self.fleet.dispatch(call, engine)
        self._carry_out(self.sched.call_routed(decision.call_id, names[engine]))
