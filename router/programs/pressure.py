"""Which programs leave an engine whose KV working set crossed the high watermark.

ACTING programs go first (their KV is idle), then REASONING ones are marked (paused when
their call ends), lowest class priority first, and only as many tokens as bring the working
set down to the low watermark, counting what is already marked. ThunderAgent's code marks
every reasoning program on the engine instead (its over-pausing bug).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.router.programs.accounting import EngineLedger
from shoal.router.programs.state import Program


@dataclass(frozen=True)
class Relief:
    """What one engine must shed: programs to pause now and programs to mark."""

    pause: list[Program] = field(default_factory=list)
    mark: list[Program] = field(default_factory=list)


def plan_relief(
    ledger: EngineLedger, capacity_tokens: int, high_watermark: float, low_watermark: float,
    idle_for: Callable[[Program], float] | None = None,
) -> Relief:
    """Programs to pause and to mark on one engine; paused ones are removed from ``ledger``.

    ``idle_for``: expected seconds until an acting program's next call (its tool's remaining
    time); acting programs expected back last are paused first.

    Below the low watermark, standing marks are lifted (the pressure passed)."""
    working_set = ledger.working_set
    marked = [p for p in ledger.members.values() if p.marked]
    if working_set <= low_watermark * capacity_tokens:
        for program in marked:
            program.marked = False
        return Relief()
    if working_set <= high_watermark * capacity_tokens:
        return Relief()
    overflow = working_set - low_watermark * capacity_tokens - sum(ledger.marginal(p) for p in marked)
    relief = Relief()
    for reasoning in (False, True):
        while overflow > 0:
            pool = [p for p in ledger.members.values() if bool(p.calls) == reasoning and not p.marked]
            if not pool:
                break
            victim = pick_victim(pool, ledger, overflow, None if reasoning else idle_for)
            overflow -= ledger.marginal(victim)
            if reasoning:
                victim.marked = True
                relief.mark.append(victim)
            else:
                ledger.remove(victim)
                relief.pause.append(victim)
    return relief


def pick_victim(
    pool: list[Program], ledger: EngineLedger, overflow: float, idle_for: Callable[[Program], float] | None = None
) -> Program:
    """Lowest class priority first; within it the program expected back last (``idle_for``),
    else the smallest program that covers the overflow alone, else the largest (fewest
    pauses, none beyond the overflow); ties: longest idle."""
    lowest = min(p.cls.priority for p in pool)
    level = sorted((p for p in pool if p.cls.priority == lowest), key=lambda p: (p.last_activity, p.program_id))
    if idle_for is not None:
        return max(level, key=idle_for)
    sizes = {p.key: ledger.marginal(p) for p in level}
    covering = [p for p in level if sizes[p.key] >= overflow]
    if covering:
        return min(covering, key=lambda p: sizes[p.key])
    return max(level, key=lambda p: sizes[p.key])
