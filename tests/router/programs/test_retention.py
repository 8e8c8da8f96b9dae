"""Retention TTLs learned per tool (Continuum's cost-benefit rule) and their use by the scheduler."""

from __future__ import annotations

from sched_helpers import finish, make, pauses, start

from shoal.router.programs.decisions import Admit, Unpin
from shoal.router.programs.retention import ANY_TOOL, RetentionPolicy, ToolDurations


def test_default_without_history_and_cap() -> None:
    policy = RetentionPolicy(default_s=2.0, max_s=300.0, break_even_s=30.0)
    assert policy.ttl([]) == 2.0
    assert policy.ttl([1.0, 1.2]) == 2.0  # fewer than 3 samples
    assert RetentionPolicy(default_s=5.0, max_s=1.0, break_even_s=30.0).ttl([]) == 1.0


def test_low_variance_tool_is_pinned_until_it_returns() -> None:
    policy = RetentionPolicy(default_s=2.0, max_s=300.0, break_even_s=30.0)
    assert policy.ttl([1.0, 1.1, 1.2, 1.3, 1.5]) == 1.5


def test_heavy_tail_pins_for_the_body_not_the_tail() -> None:
    policy = RetentionPolicy(default_s=2.0, max_s=300.0, break_even_s=30.0)
    samples = [1.0 + 0.1 * i for i in range(18)] + [250.0, 280.0]  # p90 ~ 2.7 s, tail ~ 100x
    assert 2.0 <= policy.ttl(samples) < 3.0


def test_tools_that_outlast_the_cap_or_the_value_are_not_pinned() -> None:
    policy = RetentionPolicy(default_s=2.0, max_s=300.0, break_even_s=30.0)
    assert policy.ttl([400.0, 500.0, 600.0]) == 0.0  # beyond retention_max_s
    assert policy.ttl([60.0, 70.0, 80.0]) == 0.0  # holding costs more than a re-prefill


def test_parallel_tool_calls_share_one_gap() -> None:
    durations = ToolDurations()
    durations.observe("c", ["grep", "bash", "grep"], 3.0)
    assert durations.samples("c", "grep") == (3.0,) and durations.samples("c", "bash") == (3.0,)
    assert durations.samples("c", ANY_TOOL) == (3.0,)


def test_scheduler_learns_gaps_and_unpins_for_slow_tools() -> None:
    sched, clock = make()
    admit, _ = start(sched, "p", 100)
    assert isinstance(admit, Admit) and admit.retention_s == 2.0  # no history yet
    for _ in range(3):
        assert isinstance(admit, Admit)
        finish(sched, admit.call_id, 100, 10, tools=["fast"])
        clock.advance(1.5)  # the gap between a call's end and the next call: the tool's duration
        admit, _ = start(sched, "p", 110)
    assert isinstance(admit, Admit) and admit.retention_s == 1.5
    assert sched.durations.samples("agents", "fast") == (1.5, 1.5, 1.5)
    # A tool that takes minutes: once known, its pin is dropped at the call's end.
    for _ in range(3):
        finish(sched, admit.call_id, 110, 10, tools=["build"])
        clock.advance(200)
        admit, _ = start(sched, "p", 120)
        assert isinstance(admit, Admit)
    decisions = finish(sched, admit.call_id, 120, 10, tools=["build"])
    assert decisions == [Unpin("p", "t", "A")]
    assert sched.view("p", "t").pinned_for_s == 0.0


def test_sandbox_reported_durations_are_not_counted_twice() -> None:
    sched, clock = make()
    admit, _ = start(sched, "p", 100)
    assert isinstance(admit, Admit)
    finish(sched, admit.call_id, 100, 10, tools=["bash"])
    clock.advance(4)
    sched.tool_finished("p", "t", "bash", 3.0)
    start(sched, "p", 110)
    assert sched.durations.samples("agents", "bash") == (3.0,)


def test_expected_remaining_tool_time() -> None:
    policy = RetentionPolicy(default_s=2.0, max_s=300.0, break_even_s=30.0)
    samples = [1.0, 1.0, 1.0, 100.0]
    assert policy.remaining(samples, 0.0) == 25.75
    assert policy.remaining(samples, 2.0) == 98.0  # past the body: only the tail is left
    assert policy.remaining(samples, 200.0) == 200.0  # outlived every observation: as long again
    assert policy.remaining([], 0.5) == 1.5


def test_acting_programs_expected_back_last_are_paused_first() -> None:
    sched, clock = make(retention_break_even_s=1000.0)  # re-prefills so dear that both stay pinned
    for _ in range(3):
        sched.durations.observe("agents", ["quick"], 1.0)
        sched.durations.observe("agents", ["build"], 100.0)
    calls = {}
    for pid, tokens in (("quick", 250), ("slow", 300), ("grower", 200)):
        admit, _ = start(sched, pid, tokens)
        assert isinstance(admit, Admit)
        calls[pid] = admit.call_id
    finish(sched, calls["quick"], 250, 0, tools=["quick"])
    finish(sched, calls["slow"], 300, 0, tools=["build"])
    finish(sched, calls["grower"], 200, 0)
    clock.advance(0.5)
    # 250 + 300 + 420 = 970 > 900: 220 over low. "quick" (250) would cover it alone, but it is
    # due back in half a second; "slow" waits for a 100 s build.
    _, others = start(sched, "grower", 420)
    assert pauses(others) == ["slow"]
