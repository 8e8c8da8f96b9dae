"""Admission of new programs by their expected growth, and the queue order of paused programs."""

from __future__ import annotations

from sched_helpers import finish, make, pauses, start

from shoal.router.programs.decisions import Admit, Wait
from shoal.router.programs.growth import ContextSizes


def test_context_sizes_learn_the_mean_after_enough_samples_over_a_window() -> None:
    sizes = ContextSizes(window=4, min_samples=3)
    sizes.observe("a", 100)
    sizes.observe("a", 200)
    assert sizes.expected("a") == 0  # too few to trust
    sizes.observe("a", 300)
    sizes.observe("a", 0)  # a call without usage says nothing
    assert sizes.expected("a") == 200 and sizes.expected("b") == 0
    for tokens in (500, 500, 500):
        sizes.observe("a", tokens)
    assert sizes.expected("a") == 450  # the window keeps the last 4: 300, 500, 500, 500


def _learned(sched, clock, context: int, programs: int = 8) -> None:  # type: ignore[no-untyped-def]
    """Programs of ``context`` tokens ran and finished: the class's mean context is learned."""
    for i in range(programs):
        admit, _ = start(sched, f"old{i}", context)
        assert isinstance(admit, Admit)
        finish(sched, admit.call_id, context, 0, tools=())
        sched.release(f"old{i}", "t")
    clock.advance(1)
    assert sched.working_sets()["A"] == 0


def test_a_new_program_waits_for_room_for_its_expected_context_not_its_first_prompt() -> None:
    sched, clock = make()  # 1000 tokens; low watermark 750
    _learned(sched, clock, 300)
    assert isinstance(start(sched, "a", 100)[0], Admit)  # 100 now, 300 expected
    assert isinstance(start(sched, "b", 100)[0], Admit)  # 200 now, 600 expected
    held, _ = start(sched, "c", 100)  # 300 now, but 900 expected > 750
    assert isinstance(held, Wait)
    assert sched.working_sets()["A"] == 200


def test_before_contexts_are_learned_new_programs_count_their_prompt_only() -> None:
    sched, _ = make()
    for pid in ("a", "b", "c", "d", "e", "f", "g"):
        assert isinstance(start(sched, pid, 100)[0], Admit)
    assert sched.working_sets()["A"] == 700


def test_programs_grown_past_the_expected_context_count_as_they_are() -> None:
    sched, clock = make()
    _learned(sched, clock, 200)
    big, _ = start(sched, "big", 500)  # already past the mean: counts its 500, reserves nothing more
    assert isinstance(big, Admit)
    assert isinstance(start(sched, "new", 100)[0], Admit)  # 500 + 200 expected <= 750
    assert isinstance(start(sched, "next", 50)[0], Wait)  # 500 + 200 + 200 > 750


def test_a_paused_program_queues_from_its_pause_not_from_its_calls_arrival() -> None:
    sched, clock = make(retention_default_s=60.0)
    for pid, tokens in (("w", 100), ("y", 300), ("z", 300)):
        admit, _ = start(sched, pid, tokens)
        assert isinstance(admit, Admit)
        finish(sched, admit.call_id, tokens, 0)
        clock.advance(0.5)
    a3, others = start(sched, "w", 350)  # 950 on A: z leaves
    assert pauses(others) == ["z"]
    clock.advance(1)
    finish(sched, a3.call_id, 360, 0)
    a3, others = start(sched, "w", 700)  # y leaves too
    assert pauses(others) == ["y"]
    clock.advance(1)
    y_call, _ = start(sched, "y", 310)  # y's call arrives first ...
    clock.advance(1)
    z_call, _ = start(sched, "z", 310)  # ... z's later, but z was paused first
    assert isinstance(y_call, Wait) and isinstance(z_call, Wait)
    admitted = [d.program_id for d in finish(sched, a3.call_id, 400, 0) if isinstance(d, Admit)]
    assert admitted == ["z"]  # room for one: the longest paused
