"""Request-level baselines: no admission control, every call is dispatched on arrival.

- round-robin: the next engine in turn.
- sticky (ThunderAgent ``default`` mode): a program stays on the engine that had the
  fewest programs when it started (counted until release), no capacity logic.
- prefix+load (llm-d / Dynamo style): precise prefix match + queue depth + free KV.
- Continuum: prefix+load placement, engine queue in program-arrival order, and a fixed
  2 s pin after a call whose tool's observed mean duration is <= 2 s (its public fork).
"""

from __future__ import annotations

from bench.sim_programs.policy import Call, Policy, prefix_load_pick


class RoundRobin(Policy):
    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def on_call(self, now: float, call: Call) -> None:
        self.fleet.dispatch(call, self._next % len(self.engines))
        self._next += 1


class StickyFewestPrograms(Policy):
    name = "sticky (TA default)"

    def __init__(self) -> None:
        self._home: dict[int, int] = {}
        self._count: dict[int, int] = {}

    def on_call(self, now: float, call: Call) -> None:
        home = self._home.get(call.program)
        if home is None:
            home = min(range(len(self.engines)), key=lambda i: (self._count.get(i, 0), i))
            self._home[call.program] = home
            self._count[home] = self._count.get(home, 0) + 1
        self.fleet.dispatch(call, home)

    def on_release(self, now: float, program: int) -> None:
        home = self._home.pop(program, None)
        if home is not None:
            self._count[home] -= 1


class PrefixLoad(Policy):
    name = "prefix+load"

    def on_call(self, now: float, call: Call) -> None:
        self.fleet.dispatch(call, prefix_load_pick(self, call))


class Continuum(Policy):
    name = "continuum"
    pin_s = 2.0
    """The fork's fixed TTL, used when the tool's mean observed duration is <= ``pin_s``."""

    def __init__(self) -> None:
        self._started: dict[int, float] = {}
        self._tool_total: dict[str, float] = {}
        self._tool_count: dict[str, int] = {}
        self._last_done: dict[int, tuple[float, str]] = {}

    def on_call(self, now: float, call: Call) -> None:
        started = self._started.setdefault(call.program, now)
        last = self._last_done.pop(call.program, None)
        if last is not None:  # the gap since the previous response is that tool's duration
            done_at, tool = last
            self._tool_total[tool] = self._tool_total.get(tool, 0.0) + now - done_at
            self._tool_count[tool] = self._tool_count.get(tool, 0) + 1
        self.fleet.dispatch(call, prefix_load_pick(self, call), queue_key=started)

    def retention_s(self, now: float, call: Call) -> float | None:
        tool = call.next_tool
        if tool is None:
            return None
        count = self._tool_count.get(tool, 0)
        mean = self._tool_total[tool] / count if count else 0.0
        return self.pin_s if mean <= self.pin_s else None

    def on_call_done(self, now: float, call: Call) -> None:
        if call.next_tool is not None:
            self._last_done[call.program] = (now, call.next_tool)
        else:
            self._started.pop(call.program, None)

    def on_release(self, now: float, program: int) -> None:
        self._started.pop(program, None)
        self._last_done.pop(program, None)
