"""Program scheduler: waits, aging, concurrency, leases, release, classes, priorities."""

from __future__ import annotations

import pytest
from sched_helpers import admits, finish, klass, make, start

from shoal.router.programs.decisions import Admit, Pause, Prewarm, Reject, Terminate, Wait
from shoal.router.programs.scheduler import ClassForbidden, ContextTooLong, ProgramNotFound, UnknownClass


def test_aging_bound_admits_a_call_that_waited_max_wait_s() -> None:
    sched, clock = make(max_wait_s=30.0)
    start(sched, "big", 700)
    held, _ = start(sched, "p2", 100)
    assert isinstance(held, Wait)
    assert sched.next_deadline() == clock.now + 30.0
    clock.advance(29.9)
    assert admits(sched.tick()) == []
    clock.advance(0.1)
    late = admits(sched.tick())
    assert [(a.call_id, a.forced) for a in late] == [(held.call_id, True)]
    assert late[0].engines == frozenset({"A"})
    assert sched.counters.forced_admissions["agents"] == 1
    assert sched.counters.longest_wait_s == pytest.approx(30.0)


def test_concurrent_calls_of_one_program_keep_its_state_exact() -> None:
    sched, clock = make()
    c1, _ = start(sched, "p", 200)
    c2, _ = start(sched, "p", 300)  # a parallel call of the same program
    assert isinstance(c1, Admit) and isinstance(c2, Admit)
    view = sched.view("p", "t")
    assert (view.calls_in_flight, view.activity) == (2, "reasoning")
    clock.advance(1)
    finish(sched, c2.call_id, 300, 50)  # the later call ends first
    assert sched.view("p", "t").activity == "reasoning"
    finish(sched, c1.call_id, 200, 20)  # the older call's smaller usage must not shrink the context
    view = sched.view("p", "t")
    assert (view.turns, view.context_tokens, view.activity, view.calls_in_flight) == (2, 350, "acting", 0)
    assert finish(sched, c1.call_id, 200, 20) == []  # a duplicate end is ignored
    assert sched.view("p", "t").turns == 2
    assert sched.counters.steps["agents"] == 2


def test_lease_expires_for_a_client_that_crashed_mid_call() -> None:
    sched, clock = make([klass(lease_seconds=60)], call_timeout_s=30.0)
    admit, _ = start(sched, "crashed", 100)
    assert isinstance(admit, Admit)
    clock.advance(89)  # the call counts as activity only up to the 30 s request timeout
    assert sched.tick() == []
    clock.advance(2)
    decisions = sched.tick()
    assert decisions == [Terminate("crashed", "t", "A", "lease")]
    assert sched.counters.lease_expiries["agents"] == 1
    assert finish(sched, admit.call_id, 100, 5) == []  # a late end of the lost call changes nothing
    with pytest.raises(ProgramNotFound):
        sched.view("crashed", "t")


def test_lease_expires_for_a_client_that_vanished_between_calls() -> None:
    sched, clock = make([klass(lease_seconds=60)])
    admit, _ = start(sched, "idle", 100)
    finish(sched, admit.call_id, 100, 10)
    clock.advance(59)
    assert sched.tick() == []
    sched.tool_finished("idle", "t", "bash", 1.0)  # tool activity renews the lease
    clock.advance(59)
    assert sched.tick() == []
    clock.advance(2)
    assert [d.reason for d in sched.tick() if isinstance(d, Terminate)] == ["lease"]


def test_a_running_tool_keeps_the_lease_alive() -> None:
    """A tool that runs longer than the lease is activity, not idleness (regression: the lease
    ended under a long test suite and its sandbox was removed mid-run)."""
    sched, clock = make([klass(lease_seconds=60)])
    admit, _ = start(sched, "tests", 100)
    finish(sched, admit.call_id, 100, 10)
    token = sched.tool_started("tests", "t", timeout_s=600)
    clock.advance(300)
    assert sched.tick() == []
    sched.tool_finished("tests", "t", "pytest", 300.0, token)
    clock.advance(59)
    assert sched.tick() == []
    clock.advance(2)
    assert [d.reason for d in sched.tick() if isinstance(d, Terminate)] == ["lease"]


def test_a_tool_run_counts_only_up_to_its_timeout() -> None:
    """A run whose end never arrives (a stuck handler) stops holding the lease at its deadline."""
    sched, clock = make([klass(lease_seconds=60)])
    admit, _ = start(sched, "stuck", 100)
    finish(sched, admit.call_id, 100, 10)
    sched.tool_started("stuck", "t", timeout_s=100)
    clock.advance(159)
    assert sched.tick() == []
    clock.advance(2)
    assert [d.reason for d in sched.tick() if isinstance(d, Terminate)] == ["lease"]


def test_release_is_scoped_to_the_owning_tenant() -> None:
    sched, _ = make()
    start(sched, "p1", 100, tenant="alice")
    with pytest.raises(ProgramNotFound):
        sched.release("p1", "mallory")
    with pytest.raises(ProgramNotFound):
        sched.view("p1", "mallory")
    assert sched.views("mallory") == []
    start(sched, "p1", 100, tenant="mallory")  # the same id under another tenant: another program
    assert sched.view("p1", "mallory").turns == 0 and sched.view("p1", "alice").turns == 0
    assert sched.release("p1", "alice") == [Terminate("p1", "alice", "A", "release")]
    assert sched.view("p1", "mallory").lifecycle == "active"
    with pytest.raises(ProgramNotFound):
        sched.tool_finished("p1", "alice", "bash", 1.0)


def test_release_rejects_waiting_calls_and_frees_room() -> None:
    sched, _ = make()
    start(sched, "big", 700)
    held, _ = start(sched, "small", 100)
    held2, _ = start(sched, "other", 100)
    assert isinstance(held, Wait) and isinstance(held2, Wait)
    decisions = sched.release("small", "t")
    assert Reject(held.call_id, "small", "t", "program release") in decisions
    decisions = sched.release("big", "t")
    assert [a.call_id for a in admits(decisions)] == [held2.call_id]


def test_class_reload_keeps_running_programs_on_their_config() -> None:
    sched, _ = make([klass("agents", priority=50), klass("batch", priority=10)])
    first, _ = start(sched, "p", 100)
    assert isinstance(first, Admit) and first.priority == 50
    finish(sched, first.call_id, 100, 5)
    sched.set_classes([klass("batch", priority=10)])  # "agents" removed
    with pytest.raises(UnknownClass):
        start(sched, "new", 100)
    again, _ = sched.call_started("p", "t", sched.resolve_class("batch", "m"), prompt_tokens=110)
    assert isinstance(again, Admit) and again.priority == 50  # the program keeps its own class
    finish(sched, again.call_id, 110, 5)
    sched.set_classes([klass("agents", priority=80), klass("batch", priority=10)])
    third, _ = sched.call_started("p", "t", sched.resolve_class("agents", "m"), prompt_tokens=120)
    assert isinstance(third, Admit) and third.priority == 80  # re-read at its next call
    assert sched.view("p", "t").class_name == "agents"


def test_default_class_by_model_and_fallback() -> None:
    sched, _ = make([klass("coder", model="qwen"), klass("chat", model="qwen"), klass("tiny", model="smol")])
    assert sched.resolve_class(None, "qwen").name == "coder"
    assert sched.resolve_class(None, "smol").name == "tiny"
    fallback = sched.resolve_class(None, "unknown-model")
    assert fallback.name == "default" and fallback.model == "unknown-model"


def test_waiting_calls_resume_by_priority_then_wait_time() -> None:
    sched, clock = make([klass("low", priority=10), klass("high", priority=90)])
    first, _ = start(sched, "big", 700, cls="low")
    assert isinstance(first, Admit)
    low_a, _ = start(sched, "low-a", 300, cls="low")
    clock.advance(1)
    high, _ = start(sched, "high", 500, cls="high")
    clock.advance(1)
    low_b, _ = start(sched, "low-b", 200, cls="low")
    assert all(isinstance(d, Wait) for d in (low_a, high, low_b))
    decisions = sched.release("big", "t")
    # high (500) first; low-a (300) no longer fits under 750, and the room it waits for is
    # held for it: low-b (200) would fit, but may not overtake it there.
    assert [a.program_id for a in admits(decisions)] == ["high"]
    assert sched.view("low-a", "t").lifecycle == "queued" and sched.view("low-b", "t").lifecycle == "queued"
    decisions = sched.release("high", "t")
    assert [a.program_id for a in admits(decisions)] == ["low-a", "low-b"]


def test_smaller_calls_do_not_starve_a_waiting_big_one_but_use_other_engines() -> None:
    sched, _ = make(engines={"A": 100, "B": 100}, retention_default_s=60.0)
    for pid, engine in (("a1", "A"), ("b1", "B")):
        admit, _ = start(sched, pid, 500, engine=engine)
        assert isinstance(admit, Admit)
        finish(sched, admit.call_id, 500, 0)
    big, _ = start(sched, "big", 400)
    assert isinstance(big, Wait)  # 500 + 400 > 750 on both engines
    sched.release("b1", "t")  # B has room for it now
    program = sched.find("big", "t")
    assert program is not None and program.lifecycle.value == "active" and program.engine == "B"
    held, _ = start(sched, "huge", 600)
    assert isinstance(held, Wait)  # fits nowhere: it holds the room on B (the less loaded)
    small, _ = start(sched, "small", 200)
    assert isinstance(small, Admit) and small.engines == frozenset({"A"})  # backfills the other engine
    other, _ = start(sched, "other", 300)
    assert isinstance(other, Wait)  # 400 + 300 fits B under 750, but huge waits there first


def test_max_concurrent_programs_per_class() -> None:
    sched, _ = make([klass(max_concurrent_programs=2)])
    a, _ = start(sched, "p1", 50)
    b, _ = start(sched, "p2", 50)
    c, _ = start(sched, "p3", 50)
    assert isinstance(a, Admit) and isinstance(b, Admit) and isinstance(c, Wait)
    more, _ = start(sched, "p1", 60)  # an admitted program's next call is not limited
    assert isinstance(more, Admit)
    decisions = sched.release("p2", "t")
    assert [x.call_id for x in admits(decisions)] == [c.call_id]


def test_class_context_limit_rejects_long_prompts() -> None:
    sched, _ = make([klass(max_context_tokens=500)])
    with pytest.raises(ContextTooLong, match="501 tokens"):
        start(sched, "p", 501)
    with pytest.raises(ProgramNotFound):
        sched.view("p", "t")  # a rejected first call leaves no program behind


def test_programs_near_the_head_of_the_queue_are_prewarmed_once() -> None:
    sched, _ = make(prewarm_queue_depth=1)
    start(sched, "big", 700)
    _, first = start(sched, "q1", 100)
    _, second = start(sched, "q2", 100)
    assert Prewarm("q1", "t", "agents") in first
    assert not any(isinstance(d, Prewarm) for d in second)
    assert not any(isinstance(d, Prewarm) for d in sched.tick())


def test_counts_by_class_state_and_activity() -> None:
    sched, _ = make()
    admit, _ = start(sched, "p1", 700)
    start(sched, "p2", 100)
    assert sched.program_counts() == {("agents", "active", "reasoning"): 1, ("agents", "queued", "acting"): 1}
    assert isinstance(admit, Admit)
    finish(sched, admit.call_id, 700, 1)
    assert sched.program_counts()[("agents", "active", "acting")] == 1


def test_next_deadline_is_never_a_pin_that_already_ran_out() -> None:
    """Regression: an expired pin stayed the earliest deadline, so a timer armed on it never
    fired and the aging bound was only met at the next periodic tick."""
    sched, clock = make(max_wait_s=30.0)
    admit, _ = start(sched, "p", 700)
    assert isinstance(admit, Admit)
    finish(sched, admit.call_id, 700, 0)  # pinned for the default 2 s
    assert sched.next_deadline() == clock.now + 2.0
    clock.advance(3)
    other, _ = start(sched, "q", 100)  # p's pin ran out: q fits beside it
    assert isinstance(other, Admit)
    deadline = sched.next_deadline()
    assert deadline is not None and deadline > clock.now


def test_a_program_whose_only_calls_failed_or_left_holds_no_slot() -> None:
    sched, _ = make([klass(max_concurrent_programs=1)])
    start(sched, "big", 700)
    held, _ = start(sched, "gone", 100)
    assert isinstance(held, Wait)
    decisions = sched.cancel(held.call_id)  # its client left while it waited
    assert Terminate("gone", "t", None, "abandoned") in decisions
    with pytest.raises(ProgramNotFound):
        sched.view("gone", "t")
    failed = sched.find("big", "t")
    assert failed is not None
    (call_id,) = failed.calls
    sched.call_failed(call_id)  # its first call failed upstream: no turn, no slot kept
    again, _ = start(sched, "next", 100)
    assert isinstance(again, Admit)


def test_a_class_closed_to_a_tenant_is_neither_named_nor_defaulted() -> None:
    sched, _ = make([klass("vip", priority=95, tenants=["alice"]), klass("standard", priority=40)])
    assert sched.resolve_class("vip", "m", "alice").name == "vip"
    with pytest.raises(ClassForbidden):
        sched.resolve_class("vip", "m", "mallory")
    assert sched.resolve_class(None, "m", "alice").name == "vip"
    assert sched.resolve_class(None, "m", "mallory").name == "standard"  # not the model's first class


def test_paused_programs_resume_before_new_ones_start() -> None:
    sched, clock = make(retention_default_s=60.0)
    calls = {}
    for pid in ("p1", "p2"):
        admit, _ = start(sched, pid, 300)
        assert isinstance(admit, Admit)
        calls[pid] = admit.call_id
    finish(sched, calls["p1"], 300, 0)
    finish(sched, calls["p2"], 300, 0)
    _, others = start(sched, "p2", 650)  # 950: p1 (acting) is paused
    assert [d.program_id for d in others if isinstance(d, Pause)] == ["p1"]
    newcomer, _ = start(sched, "fresh", 150)  # arrives first, never ran
    clock.advance(1)
    back, _ = start(sched, "p1", 320)  # p1's next call, later
    assert isinstance(newcomer, Wait) and isinstance(back, Wait)
    decisions = sched.release("p2", "t")
    # Both would fit alone; the paused program goes first even though it arrived later.
    assert [a.program_id for a in admits(decisions)] == ["p1", "fresh"]
