"""SIMULATOR: a closed loop of agent clients in front of simulated engines, in virtual time.

``C`` client slots each play programs of the workload one after another (program
``i`` is the same in every run). A program's call goes to the policy, which dispatches
it to an engine now or later; when the call ends the client runs the tool (a timer)
and sends the next call. Clients that crash vanish mid-program; clients that never
release just stop. Everything a policy decides goes through ``Fleet`` so the figures
(steps, hits, recompute, pauses, queue waits) are measured the same way for all.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.sim_programs.costmodel import CostModel
from bench.sim_programs.engine import EngineSpec, ProgramKV, SimCall, SimEngine
from bench.sim_programs.policy import Call, Policy
from bench.sim_programs.workload import ProgramTrace, WorkloadSpec

CHARS_PER_TOKEN = 4.4
"""JSON request bytes per prompt token (English text plus JSON escaping and keys)."""


@dataclass(frozen=True)
class FleetParams:
    """One simulated run."""

    workload: WorkloadSpec
    concurrency: int
    """Client slots (C programs in flight)."""
    engines: int = 2
    spec: EngineSpec = field(default_factory=EngineSpec)
    duration_s: float = 900.0
    warmup_s: float = 120.0
    check_blocks: bool = False
    """Verify the engines' block accounting after every step (tests)."""


@dataclass
class ProgramRun:
    """What happened to one program."""

    trace: ProgramTrace
    started_at: float
    finished_at: float | None = None
    crashed: bool = False
    paused_at: float | None = None
    pauses: list[float] = field(default_factory=list)


@dataclass
class RunStats:
    """Figures of one run over the measuring window [warmup, duration]."""

    policy: str
    steps: int = 0
    window_s: float = 0.0
    prompt_tokens: int = 0
    hit_tokens: int = 0
    recomputed_tokens: int = 0
    preemptions: int = 0
    completions: list[float] = field(default_factory=list)
    pauses: list[float] = field(default_factory=list)
    queue_waits: list[float] = field(default_factory=list)
    programs_started: int = 0
    programs_finished: int = 0
    rejected: int = 0
    policy_counters: dict[str, float] = field(default_factory=dict)

    @property
    def steps_per_min(self) -> float:
        return 60.0 * self.steps / self.window_s if self.window_s else 0.0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class Fleet:
    """Engines + clients + a policy, advanced event by event."""

    def __init__(self, params: FleetParams, cost: CostModel, policy: Policy) -> None:
        self.params = params
        self.engines = [SimEngine(f"engine-{i}", params.spec, cost) for i in range(params.engines)]
        self.shared_tokens = params.workload.system_prompt_tokens
        self.policy = policy
        self.now = 0.0
        self._events: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._next_program = itertools.count()
        self._kv: dict[int, ProgramKV] = {}
        self.programs: dict[int, ProgramRun] = {}
        self._slot_program: dict[int, int] = {}
        self._turn: dict[int, int] = {}
        self._calls: dict[int, Call] = {}
        self._held: dict[int, Call] = {}
        """Calls the policy has not dispatched yet, by program."""
        self._cid = itertools.count()
        self.stats = RunStats(policy.name)
        policy.bind(self)

    # what policies use ---------------------------------------------------------------------------

    def program_kv(self, program: int) -> ProgramKV:
        kv = self._kv.get(program)
        if kv is None:
            kv = self._kv[program] = ProgramKV(program)
        return kv

    def probe(self, call: Call) -> SimCall:
        """A stand-in for ``call``'s prompt, to ask engines how much of it they cache."""
        return SimCall(-1, self.program_kv(call.program), call.prompt_tokens, 0, self.shared_tokens)

    def dispatch(self, call: Call, engine: int, queue_key: float = 0.0) -> None:
        """Send a held or new call to ``engine``."""
        if call.dispatched_at is not None:
            raise RuntimeError(f"call of program {call.program} dispatched twice")
        trace = self.programs[call.program].trace
        turn = trace.turns[call.turn]
        call.dispatched_at = self.now
        call.engine = engine
        call.sim = SimCall(next(self._cid), self.program_kv(call.program), turn.prompt_tokens, turn.output_tokens,
                           self.shared_tokens, queue_key=queue_key)
        self._calls[call.sim.cid] = call
        self._held.pop(call.program, None)
        self.engines[engine].add(call.sim)
        if self.now >= self.params.warmup_s:
            self.stats.queue_waits.append(self.now - call.arrived_at)

    def unpin(self, program: int, engine: int | None = None) -> None:
        """Drop the program's pin (on one engine or all)."""
        for i, e in enumerate(self.engines):
            if engine is None or i == engine:
                e.unpin(program)

    def give_up(self, program: int) -> None:
        """The policy refused a held call for good: its client gives up the program and starts the next."""
        self._held.pop(program, None)
        run = self.programs[program]
        run.crashed = True
        self.stats.rejected += 1
        slot = next(s for s, p in self._slot_program.items() if p == program)
        self._start_program(slot)

    def note_pause(self, program: int) -> None:
        run = self.programs.get(program)
        if run is not None and run.paused_at is None:
            run.paused_at = self.now

    def note_resume(self, program: int) -> None:
        run = self.programs.get(program)
        if run is not None and run.paused_at is not None:
            run.pauses.append(self.now - run.paused_at)
            if self.now >= self.params.warmup_s:
                self.stats.pauses.append(self.now - run.paused_at)
            run.paused_at = None

    def schedule_at(self, when: float, kind: str, arg: int = 0) -> None:
        heapq.heappush(self._events, (when, next(self._seq), kind, arg))

    # the loop -----------------------------------------------------------------------------------

    def run(self) -> RunStats:
        for slot in range(self.params.concurrency):
            self._start_program(slot)
        if self.policy.tick_s:
            self.schedule_at(self.policy.tick_s, "tick")
        self._kick()
        end = self.params.duration_s
        while self._events:
            when, _, kind, arg = heapq.heappop(self._events)
            if when > end:
                break
            self.now = when
            if kind == "step":
                self._on_step(arg)
            elif kind == "tool":
                self._next_call(arg)
            elif kind == "tick":
                self.policy.on_tick(self.now)
                assert self.policy.tick_s
                self.schedule_at(self.now + self.policy.tick_s, "tick")
            elif kind == "timer":
                self.policy.on_tick(self.now)
            self._kick()
        return self._finish(end)

    def _kick(self) -> None:
        for i, engine in enumerate(self.engines):
            if engine.busy_until is None and (engine.waiting or engine.running):
                until = engine.start_step(self.now)
                if until is not None:
                    self.schedule_at(until, "step", i)

    def _start_program(self, slot: int) -> None:
        index = next(self._next_program)
        trace = self.params.workload.program(index)
        self.programs[index] = ProgramRun(trace, self.now)
        if self.now >= self.params.warmup_s:
            self.stats.programs_started += 1
        self._slot_program[slot] = index
        self._turn[index] = 0
        self._submit(index)

    def _submit(self, program: int) -> None:
        trace = self.programs[program].trace
        k = self._turn[program]
        turn = trace.turns[k]
        call = Call(program, k, turn.prompt_tokens, round(turn.prompt_tokens * CHARS_PER_TOKEN),
                    trace.turns[k - 1].tool if k else None, arrived_at=self.now)
        self._held[program] = call
        self.policy.on_call(self.now, call)

    def _on_step(self, index: int) -> None:
        engine = self.engines[index]
        for sim in engine.finish_step():
            call = self._calls.pop(sim.cid)
            self._call_done(engine, call, sim)
        if self.params.check_blocks:
            engine.check_blocks()

    def _call_done(self, engine: SimEngine, call: Call, sim: SimCall) -> None:
        run = self.programs[call.program]
        trace = run.trace
        turn = trace.turns[call.turn]
        call.next_tool = turn.tool
        engine.release(sim, self.now, self.policy.retention_s(self.now, call))
        if self.now >= self.params.warmup_s:
            s = self.stats
            s.steps += 1
            s.prompt_tokens += sim.prompt_tokens
            s.hit_tokens += sim.hit_tokens
            s.recomputed_tokens += sim.recomputed_tokens
            s.preemptions += sim.preemptions
        self.policy.on_call_done(self.now, call)
        slot = next(s for s, p in self._slot_program.items() if p == call.program)
        done = call.turn + 1
        if trace.crashes_after is not None and done >= trace.crashes_after:
            run.crashed = True
            self._start_program(slot)
        elif done == len(trace.turns):
            run.finished_at = self.now
            if run.started_at >= self.params.warmup_s:
                self.stats.completions.append(self.now - run.started_at)
                self.stats.programs_finished += 1
            if trace.releases:
                self.policy.on_release(self.now, call.program)
            self._start_program(slot)
        else:
            self._turn[call.program] = done
            self.schedule_at(self.now + turn.tool_s, "tool", call.program)

    def _next_call(self, program: int) -> None:
        self._submit(program)

    def _finish(self, end: float) -> RunStats:
        self.now = end
        s = self.stats
        s.window_s = end - self.params.warmup_s
        for run in self.programs.values():  # pauses still open at the end count up to the end
            if run.paused_at is not None and not run.crashed and run.finished_at is None:
                s.pauses.append(end - max(run.paused_at, self.params.warmup_s))
        s.queue_waits.extend(end - call.arrived_at for call in self._held.values())  # still held at the end
        s.policy_counters = self.policy.report()
        return s


def simulate(params: FleetParams, cost: CostModel, make_policy: Callable[[], Policy]) -> RunStats:
    """Run one policy on the workload; a fresh policy object per run."""
    return Fleet(params, cost, make_policy()).run()
