"""Time rules of program scheduling: activity, leases, lost calls, and the next deadline.

A program lives while it is active: a call arriving or ending, a tool finishing. A call in
flight (or held) counts as activity only up to the router's total request timeout, so a
client that crashed mid-call still lets its lease run out.
"""

from __future__ import annotations

from collections.abc import Iterable

from shoal.router.programs.state import Program


def last_activity(program: Program, now: float, call_timeout_s: float) -> float:
    """When the program was last active; its open calls count up to the request timeout."""
    last = program.last_activity
    for call in (*program.calls.values(), *program.waiting.values()):
        last = max(last, min(now, (call.started_at or call.arrived_at) + call_timeout_s))
    return last


def lease_expired(program: Program, now: float, call_timeout_s: float) -> bool:
    return now - last_activity(program, now, call_timeout_s) > program.cls.lease_seconds


def lost_calls(program: Program, now: float, call_timeout_s: float) -> list[str]:
    """Calls in flight past the request timeout: the router ended them without telling us."""
    return [
        call_id for call_id, call in program.calls.items()
        if (call.started_at or call.arrived_at) + call_timeout_s < now
    ]


def next_deadline(programs: Iterable[Program], now: float, max_wait_s: float, call_timeout_s: float) -> float | None:
    """The earliest time a decision may come without an event: a lease running out, a held
    call reaching the aging bound, a pin expiring (one that already ran out is no deadline)."""
    times: list[float] = []
    for p in programs:
        times.append(last_activity(p, now, call_timeout_s) + p.cls.lease_seconds)
        times.extend(c.arrived_at + max_wait_s for c in p.waiting.values())
        if not p.calls and p.pinned_until > now:
            times.append(p.pinned_until)
    return min(times) if times else None
