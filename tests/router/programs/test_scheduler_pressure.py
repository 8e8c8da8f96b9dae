"""Program scheduler under KV pressure: accounting, watermarks, pausing, marking, resuming."""

from __future__ import annotations

from sched_helpers import admits, finish, make, pauses, start

from shoal.router.programs.decisions import Admit, Wait
from shoal.router.programs.state import EngineCapacity, Lifecycle


def test_shared_prefix_blocks_are_counted_once_per_engine() -> None:
    sched, clock = make()
    system = tuple(range(5))  # a 50-token shared system prompt
    a1, _ = start(sched, "p1", 200, shared=system)
    a2, _ = start(sched, "p2", 200, shared=system)
    assert isinstance(a1, Admit) and isinstance(a2, Admit)
    assert sched.working_sets()["A"] == 350
    finish(sched, a1.call_id, 200, 30)  # usage: context 230, pinned for the default 2 s
    assert sched.working_sets()["A"] == 380
    clock.advance(3)  # the pin expired: an acting program no longer holds KV
    assert sched.working_sets()["A"] == 200
    # The same prefix under another tenant's salt hashes differently: not shared.
    start(sched, "p3", 200, tenant="other", shared=tuple(range(100, 105)))
    assert sched.working_sets()["A"] == 400


def test_new_programs_wait_when_the_low_watermark_would_be_crossed() -> None:
    sched, _ = make()
    first, _ = start(sched, "p1", 700)
    assert isinstance(first, Admit) and first.engines == frozenset({"A"})
    held, _ = start(sched, "p2", 100)
    assert isinstance(held, Wait)
    view = sched.view("p2", "t")
    assert view.lifecycle == "queued" and view.queued_for_s == 0.0 and view.paused_for_s is None


def test_acting_programs_are_paused_before_reasoning_ones() -> None:
    sched, _ = make()
    calls = {}
    for pid in ("p1", "p2", "p3", "p4"):
        admit, _ = start(sched, pid, 150)
        assert isinstance(admit, Admit)
        calls[pid] = admit.call_id
    for pid in calls:
        finish(sched, calls[pid], 150, 30)  # all acting and pinned: 720 tokens
    assert sched.working_sets()["A"] == 720
    start(sched, "p1", 280)  # 820: inside the band, nothing happens
    decision, others = start(sched, "p2", 280)  # 920 > 900: 170 over the low watermark
    assert isinstance(decision, Admit)
    paused = pauses(others)
    assert len(paused) == 1 and paused[0] in {"p3", "p4"}
    assert sched.working_sets()["A"] == 740
    assert sched.counters.pauses["agents"] == 1


def test_marking_reasoning_programs_stops_at_the_overflow() -> None:
    """ThunderAgent's code marks every reasoning program on the engine; only the overflow may go."""
    sched, _ = make()
    calls = {}
    for pid in ("p1", "p2", "p3", "p4", "p5"):
        admit, _ = start(sched, pid, 140)
        assert isinstance(admit, Admit)
        calls[pid] = admit.call_id
    # The engine reports a smaller pool: 700 tokens, high 630, low 525 -> 175 over.
    decisions = sched.engines_changed({"A": EngineCapacity(total_blocks=70, block_size=10)})
    assert pauses(decisions) == []  # all are reasoning: marked, not paused
    marked = [v.program_id for v in sched.views() if v.marked_for_pause]
    assert len(marked) == 2  # 280 tokens cover 175; all five would be 700
    assert sched.tick() == [] and len([v for v in sched.views() if v.marked_for_pause]) == 2
    # A marked program is paused when its call ends, and its blocks stop counting.
    decisions = finish(sched, calls[marked[0]], 140, 10)
    assert pauses(decisions) == [marked[0]]
    assert sched.view(marked[0], "t").lifecycle == "paused"
    # An unmarked one just goes on acting.
    unmarked = next(pid for pid in calls if pid not in marked)
    assert pauses(finish(sched, calls[unmarked], 140, 10)) == []


def test_hysteresis_no_flapping_inside_the_band() -> None:
    sched, clock = make(retention_default_s=60.0)
    a1, _ = start(sched, "p1", 300)
    a2, _ = start(sched, "p2", 300)
    assert isinstance(a1, Admit) and isinstance(a2, Admit)
    finish(sched, a1.call_id, 300, 120)
    finish(sched, a2.call_id, 300, 120)
    assert sched.working_sets()["A"] == 840  # above low (750), below high (900)
    waiting, _ = start(sched, "p3", 100)
    assert isinstance(waiting, Wait)
    for _ in range(50):
        clock.advance(0.5)
        assert sched.tick() == []  # no pause, no admission: the band holds
    c1, _ = start(sched, "p1", 470)
    assert isinstance(c1, Admit) and sched.working_sets()["A"] == 890
    c2, others = start(sched, "p2", 520)  # 990 > 900: 240 over low
    assert isinstance(c2, Admit) and pauses(others) == []
    assert sched.view("p1", "t").marked_for_pause  # smallest program covering the overflow
    assert not sched.view("p2", "t").marked_for_pause
    decisions = finish(sched, c1.call_id, 470, 10)
    assert pauses(decisions) == ["p1"]
    resumed = admits(decisions)  # 520 left: the waiting program fits under low again
    assert [a.program_id for a in resumed] == ["p3"]
    assert sched.counters.pauses["agents"] == 1


def test_paused_program_resumes_on_its_origin_engine() -> None:
    sched, clock = make(engines={"A": 100, "B": 100})
    a1, _ = start(sched, "p1", 300, engine="A")
    assert isinstance(a1, Admit) and a1.engines == frozenset({"A", "B"})
    finish(sched, a1.call_id, 300, 0)
    filler, _ = start(sched, "f", 700, engine="B")  # B stays busy: p1 has nowhere else to go
    assert isinstance(filler, Admit)
    a2, _ = start(sched, "p2", 400, engine="A")
    finish(sched, a2.call_id, 400, 0)
    a2b, others = start(sched, "p2", 650)  # sticky to A: 950 there
    assert isinstance(a2b, Admit) and a2b.engines == frozenset({"A"})
    assert pauses(others) == ["p1"]
    clock.advance(5)
    finish(sched, a2b.call_id, 650, 10)
    clock.advance(5)  # p2's pin has expired: A is empty again
    back, _ = start(sched, "p1", 320)
    assert isinstance(back, Admit) and back.resumed
    assert back.engines == frozenset({"A"})
    assert sched.counters.resumes["agents"] == 1
    assert sched.counters.pause_seconds[-1][1] == 10.0


def test_paused_program_moves_when_its_origin_has_no_room() -> None:
    sched, _ = make(engines={"A": 100, "B": 100}, retention_default_s=60.0)
    a1, _ = start(sched, "p1", 300, engine="A")
    finish(sched, a1.call_id, 300, 0)
    a2, _ = start(sched, "p2", 400, engine="A")
    finish(sched, a2.call_id, 400, 0)
    a2b, others = start(sched, "p2", 650)
    assert pauses(others) == ["p1"]
    finish(sched, a2b.call_id, 660, 0)  # p2 stays pinned on A with 660 tokens
    back, _ = start(sched, "p1", 320)
    assert isinstance(back, Admit) and back.engines == frozenset({"B"})


def test_engine_without_capacity_gets_nothing_and_no_reports_means_unmanaged() -> None:
    sched, _ = make(engines={"A": 100, "B": 100})
    sched.engines_changed(
        {"A": EngineCapacity(total_blocks=100, block_size=10, up=False), "B": EngineCapacity(100, block_size=10)}
    )
    admit, _ = start(sched, "p1", 100)
    assert isinstance(admit, Admit) and admit.engines == frozenset({"B"})
    sched.engines_changed({})  # nothing scraped yet: class limits only, any engine
    admit2, _ = start(sched, "p2", 100)
    assert isinstance(admit2, Admit) and admit2.engines is None


def test_candidates_restrict_placement() -> None:
    sched, _ = make(engines={"A": 100, "B": 100})
    admit, _ = start(sched, "p1", 100, candidates=["B"])
    assert isinstance(admit, Admit) and admit.engines == frozenset({"B"})
    assert sched.view("p1", "t").lifecycle == Lifecycle.ACTIVE.value


def test_replicas_sharing_an_engine_leave_room_for_each_others_programs() -> None:
    """Each router replica accounts only the programs it owns; with countForeignLoad it also
    leaves room for what the engine reports in use beyond them."""
    mine, _ = make()
    other, _ = make(count_foreign_load=True)
    for sched in (mine, other):
        admit, _ = start(sched, "resident", 300) if sched is other else start(sched, "big", 600)
        assert isinstance(admit, Admit)
    # The engine holds both: 900 tokens of 1000 in use (90 of 100 blocks).
    report = {"A": EngineCapacity(total_blocks=100, free_blocks=10, block_size=10)}
    mine.engines_changed(report)
    other.engines_changed(report)
    first, _ = start(other, "early", 100)  # one report is not enough: it may only lag
    assert isinstance(first, Admit)
    other.release("early", "t")
    other.engines_changed(report)  # the second report in a row: 600 tokens are someone else's
    blind, _ = start(mine, "new", 100)  # 600 + 100 <= 750 by its own count
    assert isinstance(blind, Admit)
    aware, _ = start(other, "new", 100)  # 600 foreign: 400 left, 300 + 100 > 300 under low
    assert isinstance(aware, Wait)


def test_a_one_report_spike_of_foreign_load_pauses_nobody() -> None:
    sched, _ = make(count_foreign_load=True, retention_default_s=60.0)
    admit, _ = start(sched, "p", 600)
    assert isinstance(admit, Admit)
    finish(sched, admit.call_id, 600, 0)  # pinned: 600 of 1000
    spike = {"A": EngineCapacity(total_blocks=100, free_blocks=0, block_size=10)}  # 400 unexplained
    assert pauses(sched.engines_changed(spike)) == []
    calm = {"A": EngineCapacity(total_blocks=100, free_blocks=40, block_size=10)}
    assert pauses(sched.engines_changed(calm)) == []
    assert pauses(sched.engines_changed(spike)) == []  # spike, calm, spike: never two in a row
    assert pauses(sched.engines_changed(spike)) == ["p"]  # it persists: 600 > 0.9 x 600 left
