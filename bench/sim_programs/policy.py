"""The interface between the simulated fleet and a program-scheduling policy.

The fleet plays the router's proxy: it tells the policy when a program's call arrives,
when it finishes (with the engine's usage), when the client releases the program, and
the policy's timer; the policy answers by acting on the fleet: dispatch a held call to
an engine, drop a program's pin, record that it paused or resumed a program.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.sim_programs.engine import SimCall, SimEngine

if TYPE_CHECKING:
    from bench.sim_programs.fleet import Fleet


@dataclass
class Call:
    """One LLM call as the router sees it."""

    program: int
    turn: int
    prompt_tokens: int
    """The prompt's length in tokens (the router tokenizes like the engine)."""
    payload_chars: int
    """Length of the JSON request body (what a chars/token estimate starts from)."""
    prev_tool: str | None
    """Tool the previous turn called (from its tool_calls); None on the first call."""
    next_tool: str | None = None
    """Tool this call's response calls (known when it finishes); None for a final answer."""
    arrived_at: float = 0.0
    dispatched_at: float | None = None
    engine: int | None = None
    sim: SimCall | None = None

    @property
    def usage_prompt(self) -> int:
        return self.prompt_tokens

    @property
    def usage_completion(self) -> int:
        return self.sim.output_tokens if self.sim else 0

    @property
    def usage_cached(self) -> int:
        return self.sim.hit_tokens if self.sim else 0


class Policy:
    """A program-scheduling policy driven by the fleet (one instance per run)."""

    name: str = "policy"
    tick_s: float | None = None
    """Period of ``on_tick``; None: no timer."""

    def bind(self, fleet: Fleet) -> None:
        self.fleet = fleet

    @property
    def engines(self) -> list[SimEngine]:
        return self.fleet.engines

    def on_call(self, now: float, call: Call) -> None:
        """A call arrived: dispatch it now (``fleet.dispatch``) or hold it and dispatch later."""
        raise NotImplementedError

    def retention_s(self, now: float, call: Call) -> float | None:
        """Seconds the engine keeps the finished call's blocks pinned (None: no pin)."""
        return None

    def on_call_done(self, now: float, call: Call) -> None:
        """The call's response ended (``call.usage_*`` and ``call.next_tool`` are known)."""

    def on_release(self, now: float, program: int) -> None:
        """The client released the program (it will send no more calls)."""

    def on_tick(self, now: float) -> None:
        """The policy's timer fired."""

    def report(self) -> dict[str, float]:
        """Policy-specific totals for the report (e.g. the scheduler's own counters)."""
        return {}


def prefix_load_pick(policy: Policy, call: Call, candidates: list[int] | None = None, prefix_weight: float = 3.0) -> int:
    """Precise prefix affinity + load, as the router's default picking (and llm-d's) scores it.

    ``prefix_weight`` x fraction of the prompt cached there + queue depth (min-max normalized)
    + free KV; highest score wins, ties to the lower index.
    """
    engines = policy.engines
    pool = list(range(len(engines))) if candidates is None else candidates
    waits = [len(e.waiting) + len(e.running) for e in engines]
    lo, hi = min(waits[i] for i in pool), max(waits[i] for i in pool)
    best, best_score = pool[0], -1.0
    probe = policy.fleet.probe(call)
    for i in pool:
        engine = engines[i]
        prefix = engine.match_tokens(probe) / max(1, call.prompt_tokens)
        queue = 1.0 if hi == lo else (hi - waits[i]) / (hi - lo)
        score = prefix_weight * prefix + queue + (1.0 - engine.kv_usage)
        if score > best_score:
            best, best_score = i, score
    return best
