"""Proactive resume of paused programs between calls, and engine pins that match the scheduler's."""

from __future__ import annotations

from sched_helpers import admits, finish, make, pauses, start

from shoal.router.programs.decisions import Admit, Resume, Unpin
from shoal.router.programs.state import Lifecycle


def _paused_acting() -> tuple:
    """p1 (300 tokens, acting) is paused on A when p2 grows to 650 there."""
    sched, clock = make(retention_default_s=60.0)
    a1, _ = start(sched, "p1", 300)
    assert isinstance(a1, Admit)
    finish(sched, a1.call_id, 300, 0)
    a2, _ = start(sched, "p2", 400)
    assert isinstance(a2, Admit)
    finish(sched, a2.call_id, 400, 0)
    a2b, others = start(sched, "p2", 650)
    assert pauses(others) == ["p1"]
    return sched, clock, a2b


def test_a_paused_acting_program_resumes_when_room_frees_and_its_call_runs_at_once() -> None:
    sched, clock, a2b = _paused_acting()
    clock.advance(3)
    assert not [d for d in sched.tick() if isinstance(d, Resume)]  # 950 on A: no room
    finish(sched, a2b.call_id, 650, 0)
    clock.advance(1)
    resumed = [d for d in sched.release("p2", "t") if isinstance(d, Resume)]
    assert resumed == [Resume("p1", "t", "A")]
    program = sched.find("p1", "t")
    assert program is not None and program.lifecycle is Lifecycle.ACTIVE
    assert sched.working_sets()["A"] == 300  # its room is held for it: its tool's expected
    assert sched.view("p1", "t").pinned_for_s == 58.0  # rest (60 s default - 4 s run) + 2 s slack
    assert sched.counters.resumes["agents"] == 1 and sched.counters.pause_seconds[-1][1] == 4.0
    back, _ = start(sched, "p1", 320)
    assert isinstance(back, Admit) and back.engines == frozenset({"A"}) and not back.resumed


def test_a_program_paused_after_its_final_answer_is_not_resumed() -> None:
    sched, clock = make(retention_default_s=60.0)
    a1, _ = start(sched, "p1", 300)
    assert isinstance(a1, Admit)
    finish(sched, a1.call_id, 300, 0)
    a2, _ = start(sched, "p2", 400)
    assert isinstance(a2, Admit)
    a2b, _ = start(sched, "p2", 650)
    assert isinstance(a2b, Admit)
    program = sched.find("p1", "t")
    assert program is not None
    program.last_tools = ()  # as if p1's last response had been its final answer
    finish(sched, a2b.call_id, 650, 0)
    clock.advance(1)
    assert not [d for d in sched.release("p2", "t") if isinstance(d, Resume)]


def test_a_program_whose_tool_outlived_every_observation_is_not_resumed() -> None:
    sched, clock, a2b = _paused_acting()
    sched.durations.observe("agents", ["bash"], 1.0)
    sched.durations.observe("agents", ["bash"], 1.5)
    sched.durations.observe("agents", ["bash"], 2.0)
    finish(sched, a2b.call_id, 650, 0)
    clock.advance(10)  # p1's bash has run 10 s; it never took more than 2 s
    assert not [d for d in sched.release("p2", "t") if isinstance(d, Resume)]


def test_a_final_answer_drops_the_pin_at_once() -> None:
    sched, _ = make(retention_default_s=60.0)
    a1, _ = start(sched, "p1", 300)
    assert isinstance(a1, Admit) and a1.retention_s == 60.0
    assert finish(sched, a1.call_id, 300, 10, tools=()) == [Unpin("p1", "t", "A")]
    assert sched.working_sets()["A"] == 0


def test_a_pin_shortened_by_the_learned_ttl_is_dropped_on_the_engine_when_it_ends() -> None:
    sched, clock = make(retention_default_s=60.0)
    for _ in range(3):
        sched.durations.observe("agents", ["edit"], 1.0)
        sched.durations.observe("agents", ["test"], 20.0)
    a1, _ = start(sched, "p1", 300)
    assert isinstance(a1, Admit) and a1.retention_s == 20.0  # the class's pooled gaps
    assert finish(sched, a1.call_id, 300, 10, tools=["edit"]) == []  # learned: 1 s for edit
    clock.advance(0.5)
    assert not [d for d in sched.tick() if isinstance(d, Unpin)]
    deadline = sched.next_deadline()
    assert deadline is not None and deadline <= clock.now + 0.5
    clock.advance(0.5)
    assert [d for d in sched.tick() if isinstance(d, Unpin)] == [Unpin("p1", "t", "A")]
    assert sched.working_sets()["A"] == 0
    assert not admits(sched.tick())


def test_the_longest_paused_program_resumes_first_when_room_is_scarce() -> None:
    sched, clock = make(retention_default_s=60.0)
    for pid, tokens in (("w", 100), ("y", 300), ("z", 300)):
        admit, _ = start(sched, pid, tokens)
        assert isinstance(admit, Admit)
        finish(sched, admit.call_id, tokens, 0)
        clock.advance(0.5)
    a3, others = start(sched, "w", 350)  # 950 on A: z leaves (expected back last)
    assert pauses(others) == ["z"]
    clock.advance(1)
    finish(sched, a3.call_id, 360, 0)  # 660: no room for z yet
    a3, others = start(sched, "w", 700)  # 1000: y leaves too
    assert pauses(others) == ["y"]
    clock.advance(1)
    resumed = [d for d in finish(sched, a3.call_id, 400, 0) if isinstance(d, Resume)]
    assert resumed == [Resume("z", "t", "A")]  # room for one of them: the one paused first
