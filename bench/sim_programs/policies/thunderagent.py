"""ThunderAgent's program scheduler ('tr' mode), as its code does it and as its paper intends.

Both (reference page, "ThunderAgent as implemented"): a program is REASONING (call in
flight) or ACTING (between calls) and ACTIVE or PAUSED; its tokens are the request's
JSON length / a chars-per-token ratio (5.0, EMA 0.2 on usage) until the response's
usage arrives; an engine's load is REASONING tokens + ACTING tokens + 100 per program
against block_size x num_blocks. A new program is queued when the global queue is not
empty, else placed on the engine with the fewest active tokens that has room for its
estimate + 100, else queued; calls of active programs go to their engine unchecked; a
call of a paused program waits. Every 5 s: resume, then pause. Resume fills the summed
free room of engines with > 100 free, in groups (paused with a waiting call, new,
paused acting), each smallest first, then places them largest first on the engine with
the MOST free room (no origin preference); 1800 s forces a resume. Pause, per engine
over capacity: ACTING programs smallest first, then it marks REASONING programs, paused
when their response ends. No KV pins (vLLM).

As coded: marking does not reduce the overflow, so every REASONING program on the engine
is marked; shared prefixes are counted per program; no decay.
As intended (paper): marked tokens count against the overflow (marking stops once it is
covered), the shared system prompt is counted once per engine, and ACTING tokens decay
as 2^-t (t = seconds in the tool) in the capacity checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.sim_programs.policy import Call, Policy

BUFFER = 100
RATIO0 = 5.0
RATIO_EMA = 0.2
FORCED_RESUME_S = 1800.0


@dataclass
class TAProgram:
    program: int
    tokens: float
    reasoning: bool = True
    paused: bool = False
    admitted: bool = False
    engine: int | None = None
    pending: Call | None = None
    marked: bool = False
    acting_since: float = 0.0
    queued_at: float = 0.0


class ThunderAgent(Policy):
    tick_s = 5.0

    def __init__(self, intended: bool = False) -> None:
        self.intended = intended
        self.name = "TA as intended" if intended else "TA as coded"
        self.ratio = RATIO0
        self.programs: dict[int, TAProgram] = {}
        self.queue: list[TAProgram] = []

    # accounting ----------------------------------------------------------------------------------

    def _capacity(self, engine: int) -> float:
        spec = self.engines[engine].spec
        return float(spec.num_blocks * spec.block_size)

    def _weight(self, p: TAProgram, now: float) -> float:
        if p.reasoning or not self.intended:
            return 1.0
        return 2.0 ** -(now - p.acting_since)

    def _used(self, engine: int, now: float) -> float:
        members = [p for p in self.programs.values() if p.engine == engine and not p.paused]
        used = sum(p.tokens * self._weight(p, now) for p in members) + BUFFER * len(members)
        if self.intended and members:
            used -= (len(members) - 1) * self.fleet.shared_tokens
        return used

    def _free(self, engine: int, now: float) -> float:
        return self._capacity(engine) - self._used(engine, now)

    # events --------------------------------------------------------------------------------------

    def on_call(self, now: float, call: Call) -> None:
        estimate = call.payload_chars / self.ratio
        p = self.programs.get(call.program)
        if p is None:
            p = self.programs[call.program] = TAProgram(call.program, estimate, pending=call)
            if self.queue:
                self._enqueue(p, now)
                return
            room = [e for e in range(len(self.engines)) if self._free(e, now) >= estimate + BUFFER]
            if not room:
                self._enqueue(p, now)
                return
            self._activate(p, min(room, key=lambda e: (self._used(e, now), e)))
            return
        p.reasoning = True
        if p.paused:
            p.pending = call  # blocked until the scheduler resumes it
            return
        p.tokens = estimate
        assert p.engine is not None
        self.fleet.dispatch(call, p.engine)

    def on_call_done(self, now: float, call: Call) -> None:
        p = self.programs.get(call.program)
        if p is None:
            return
        self.ratio = (1 - RATIO_EMA) * self.ratio + RATIO_EMA * call.payload_chars / max(1, call.usage_prompt)
        p.tokens = call.usage_prompt + call.usage_completion
        p.reasoning = False
        p.acting_since = now
        if p.marked:
            p.marked = False
            self._pause(p, now)

    def on_release(self, now: float, program: int) -> None:
        p = self.programs.pop(program, None)
        if p is not None and p in self.queue:
            self.queue.remove(p)

    def on_tick(self, now: float) -> None:
        self._resume(now)
        for engine in range(len(self.engines)):
            self._pause_engine(engine, now)

    # scheduling ----------------------------------------------------------------------------------

    def _enqueue(self, p: TAProgram, now: float) -> None:
        p.queued_at = now
        self.queue.append(p)

    def _activate(self, p: TAProgram, engine: int) -> None:
        p.engine = engine
        p.admitted = True
        if p.paused:
            p.paused = False
            self.fleet.note_resume(p.program)
        if p.pending is not None:
            call, p.pending = p.pending, None
            self.fleet.dispatch(call, engine)

    def _pause(self, p: TAProgram, now: float) -> None:
        p.paused = True
        p.engine = None
        self._enqueue(p, now)
        self.fleet.note_pause(p.program)

    def _resume(self, now: float) -> None:
        free = {e: self._free(e, now) for e in range(len(self.engines))}
        room = sum(f for f in free.values() if f > BUFFER)
        groups = (
            [p for p in self.queue if p.admitted and p.pending is not None],
            [p for p in self.queue if not p.admitted],
            [p for p in self.queue if p.admitted and p.pending is None],
        )
        chosen: list[TAProgram] = []
        blocked = False
        for group in groups:
            for p in sorted(group, key=lambda q: q.tokens):
                need = p.tokens + BUFFER
                forced = now - p.queued_at >= FORCED_RESUME_S
                if forced or (not blocked and need <= room):
                    chosen.append(p)
                    room -= need
                else:
                    blocked = True
        for p in sorted(chosen, key=lambda q: -q.tokens):
            engine = max(free, key=lambda e: (free[e], -e))  # worst fit: the engine with the most room
            free[engine] -= p.tokens + BUFFER
            self.queue.remove(p)
            self._activate(p, engine)

    def _pause_engine(self, engine: int, now: float) -> None:
        if self._free(engine, now) >= 0:
            return
        members = [p for p in self.programs.values() if p.engine == engine and not p.paused]
        for p in sorted((p for p in members if not p.reasoning), key=lambda q: q.tokens):
            if self._free(engine, now) >= 0:
                return
            self._pause(p, now)
        overflow = -self._free(engine, now)
        if overflow <= 0:
            return
        if self.intended:
            overflow -= sum(p.tokens + BUFFER for p in members if p.reasoning and p.marked)
        for p in sorted((p for p in members if p.reasoning and not p.marked), key=lambda q: q.tokens):
            if overflow <= 0:
                break
            p.marked = True
            if self.intended:
                overflow -= p.tokens + BUFFER
