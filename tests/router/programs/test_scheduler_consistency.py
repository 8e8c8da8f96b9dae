"""The per-engine ledgers kept event by event always equal a recount from the program records."""

from __future__ import annotations

import contextlib
import random

from sched_helpers import BLOCK, finish, klass, make, start

from shoal.router.programs.decisions import Admit
from shoal.router.programs.leases import last_activity
from shoal.router.programs.scheduler import ProgramNotFound, ProgramScheduler
from shoal.router.programs.state import EngineCapacity


def test_kept_working_sets_match_a_recount_under_random_events() -> None:
    rng = random.Random(7)
    sched, clock = make([klass(max_concurrent_programs=6, lease_seconds=30)], engines={"A": 60, "B": 60},
                        max_wait_s=8.0, retention_default_s=1.5)
    system = tuple(range(1000, 1008))
    in_flight: dict[str, str] = {}  # call id -> program
    for step in range(1500):
        clock.advance(rng.choice([0.0, 0.05, 0.3, 1.0]))
        pid = f"p{rng.randrange(12)}"
        roll = rng.random()
        if roll < 0.4:
            tokens = rng.randrange(2, 40) * BLOCK
            try:
                decision, _ = start(sched, pid, tokens, shared=system[: rng.randrange(0, 9)],
                                    tenant=rng.choice(["t", "u"]))
            except ValueError:
                continue
            in_flight[decision.call_id] = pid
        elif roll < 0.75 and in_flight:
            call_id = rng.choice(sorted(in_flight))
            del in_flight[call_id]
            if rng.random() < 0.8:
                finish(sched, call_id, rng.randrange(20, 400), rng.randrange(1, 40), tools=rng.choice([[], ["bash"]]))
            else:
                sched.call_failed(call_id)
        elif roll < 0.85:
            with contextlib.suppress(ProgramNotFound):
                sched.release(pid, rng.choice(["t", "u"]))
        elif roll < 0.9:
            blocks = rng.choice([30, 60, 90])
            sched.engines_changed({"A": EngineCapacity(blocks, block_size=BLOCK),
                                   "B": EngineCapacity(60, block_size=BLOCK, up=rng.random() < 0.9)})
        else:
            sched.tick()
        kept = {url: ws for url, ws in sched.working_sets().items() if ws}
        assert kept == sched.audit_working_sets(), step
        deadline, exact = sched.next_deadline(), _exact_deadline(sched)
        assert exact is None or (deadline is not None and deadline <= exact), step  # early at worst
    assert sum(sched.counters.pauses.values()) > 0 and sum(sched.counters.steps.values()) > 100


def _exact_deadline(sched: ProgramScheduler) -> float | None:
    """The next deadline from a full pass over the programs (what the kept one must not pass)."""
    now = sched.clock()
    times: list[float] = []
    for p in sched._programs.values():
        times.append(last_activity(p, now, sched.call_timeout_s) + p.cls.lease_seconds)
        times.extend(c.arrived_at + sched.config.max_wait_s for c in p.waiting.values())
        times.extend((c.started_at or c.arrived_at) + sched.call_timeout_s for c in p.calls.values())
        if not p.calls and p.pinned_until > now and p.counts(now):
            times.append(p.pinned_until)
    return min(times) if times else None


def test_admitted_calls_land_on_an_allowed_engine_and_are_charged_there() -> None:
    sched, _ = make(engines={"A": 100, "B": 100})
    admit, _ = start(sched, "p", 300)
    assert isinstance(admit, Admit) and admit.engines == frozenset({"A", "B"})
    program = sched.find("p", "t")
    assert program is not None and program.engine in {"A", "B"}
    assert sched.working_sets()[program.engine] == 300
