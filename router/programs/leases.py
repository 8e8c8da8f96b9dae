"""Time rules of program scheduling: activity, leases and lost calls.

A program lives while it is active: a call arriving or ending, a tool running or finishing.
A call in flight (or held) counts as activity only up to the router's total request timeout,
and a tool run up to its own timeout, so a client that crashed mid-call still lets its lease
run out.
"""

from __future__ import annotations

from shoal.router.programs.state import Program


def last_activity(program: Program, now: float, call_timeout_s: float) -> float:
    """When the program was last active; its open calls count up to the request timeout."""
    last = program.last_activity
    for call in (*program.calls.values(), *program.waiting.values()):
        last = max(last, min(now, (call.started_at or call.arrived_at) + call_timeout_s))
    for deadline in program.tools_running.values():
        last = max(last, min(now, deadline))
    return last


def lease_expired(program: Program, now: float, call_timeout_s: float) -> bool:
    return now - last_activity(program, now, call_timeout_s) > program.cls.lease_seconds


def lost_calls(program: Program, now: float, call_timeout_s: float) -> list[str]:
    """Calls in flight past the request timeout: the router ended them without telling us."""
    return [
        call_id for call_id, call in program.calls.items()
        if (call.started_at or call.arrived_at) + call_timeout_s < now
    ]


def expiry_check_time(program: Program, now: float, call_timeout_s: float) -> float:
    """When the program's lease may run out or one of its calls may be lost, at the earliest."""
    times = [last_activity(program, now, call_timeout_s) + program.cls.lease_seconds]
    times.extend((c.started_at or c.arrived_at) + call_timeout_s for c in program.calls.values())
    return min(times)
