"""Dynamic SplitFuse scheduler: budgets, decode priority, chunking, preemption, fairness (no torch)."""

from __future__ import annotations

import subprocess
import sys

from shoal.engine.block_manager import BlockManager
from shoal.engine.sampling_params import SamplingParams
from shoal.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from shoal.engine.sequence import Sequence

EOS = frozenset({0})


def make_scheduler(blocks: int = 64, block_size: int = 4, budget: int = 16, max_seqs: int = 8) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=max_seqs, max_model_len=blocks * block_size),
        BlockManager(blocks, block_size),
    )


_arrival = iter(range(10**9))


def add(s: Scheduler, n_prompt: int, request_id: str, max_tokens: int = 8, priority: int = 0) -> Sequence:
    seq = Sequence(
        request_id,
        list(range(1, n_prompt + 1)),
        SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        arrival=next(_arrival),
        priority=priority,
    )
    s.add(seq)
    return seq


def run_step(s: Scheduler) -> SchedulerOutput:
    out = s.schedule()
    samplers = [item.seq for item in out.scheduled if item.samples]
    s.postprocess(out)
    for seq in samplers:
        s.append_token(seq, 7, EOS)
    return out


def test_import_is_torch_free() -> None:
    code = "import sys, shoal.engine.scheduler, shoal.engine.block_manager; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_budget_never_exceeded_and_all_finish() -> None:
    s = make_scheduler(budget=10)
    seqs = [add(s, n, f"r{i}", max_tokens=5) for i, n in enumerate([3, 25, 7, 1, 14, 9])]
    steps = 0
    while s.has_unfinished():
        out = run_step(s)
        assert out.num_batched_tokens <= 10
        assert len({i.seq.seq_id for i in out.scheduled}) == len(out.scheduled)
        steps += 1
        assert steps < 200
    assert all(seq.num_output_tokens == 5 and seq.finish_reason == "length" for seq in seqs)
    assert s.block_manager.num_free_blocks == s.block_manager.num_blocks


def test_decodes_scheduled_before_prompt_chunks() -> None:
    s = make_scheduler(budget=8)
    a = add(s, 4, "a")
    run_step(s)  # a prefills and samples
    b = add(s, 20, "b")
    out = s.schedule()
    assert out.scheduled[0].seq is a and out.scheduled[0].num_tokens == 1
    assert out.scheduled[1].seq is b and out.scheduled[1].num_tokens == 7


def test_long_prompt_is_chunked_across_steps() -> None:
    s = make_scheduler(budget=6)
    seq = add(s, 20, "long")
    sizes = []
    while seq.num_output_tokens == 0:
        out = run_step(s)
        sizes.append(out.scheduled[0].num_tokens)
    assert sizes == [6, 6, 6, 2]


def test_preemption_frees_blocks_and_sequence_resumes() -> None:
    s = make_scheduler(blocks=6, block_size=4, budget=64)
    a = add(s, 8, "a", max_tokens=12)
    b = add(s, 8, "b", max_tokens=12)
    preempted = 0
    steps = 0
    while s.has_unfinished():
        out = run_step(s)
        preempted += len(out.preempted)
        steps += 1
        assert steps < 300
    assert preempted >= 1
    assert s.num_preemptions == preempted
    assert a.num_output_tokens == 12 and b.num_output_tokens == 12
    assert s.block_manager.num_free_blocks == 6


def test_preempts_lowest_priority_first() -> None:
    s = make_scheduler(blocks=5, block_size=4, budget=64)
    high = add(s, 8, "high", max_tokens=20, priority=5)
    low = add(s, 8, "low", max_tokens=20, priority=0)
    victims = []
    while s.has_unfinished() and not victims:
        victims = run_step(s).preempted
    assert victims and victims[0] is low
    assert high.num_preemptions == 0


def test_higher_priority_is_admitted_first() -> None:
    s = make_scheduler(budget=64, max_seqs=1)
    low = add(s, 4, "low", priority=0)
    high = add(s, 4, "high", priority=10)
    out = run_step(s)
    assert [item.seq for item in out.scheduled] == [high]
    assert low.status.value == "waiting"


def test_no_starvation_under_steady_stream() -> None:
    s = make_scheduler(blocks=40, block_size=4, budget=12, max_seqs=4)
    big = add(s, 30, "big", max_tokens=3)
    finished_at = None
    for step in range(400):
        add(s, 4, f"small{step}", max_tokens=2)
        run_step(s)
        if big.is_finished:
            finished_at = step
            break
    assert finished_at is not None, "a long request must not starve behind a steady stream of short ones"


def test_priority_aging_lets_low_priority_run() -> None:
    s = make_scheduler(blocks=40, block_size=4, budget=4, max_seqs=1)
    low = add(s, 2, "low", max_tokens=1, priority=0)
    for step in range(500):
        add(s, 2, f"hi{step}", max_tokens=1, priority=3)
        run_step(s)
        if low.is_finished:
            break
    assert low.is_finished


def test_max_num_seqs_respected() -> None:
    s = make_scheduler(budget=64, max_seqs=3)
    for i in range(6):
        add(s, 2, f"r{i}")
    run_step(s)
    assert len(s.running) == 3


def test_abort_frees_blocks() -> None:
    s = make_scheduler()
    add(s, 10, "x")
    run_step(s)
    aborted = s.abort("x")
    assert aborted and aborted[0].finish_reason == "abort"
    assert s.block_manager.num_free_blocks == s.block_manager.num_blocks
    assert not s.has_unfinished()


def test_eos_and_stop_token_finish() -> None:
    s = make_scheduler()
    seq = Sequence("e", [1, 2, 3], SamplingParams(max_tokens=10, stop_token_ids=(5,)))
    s.add(seq)
    out = s.schedule()
    s.postprocess(out)
    s.append_token(seq, 5, EOS)
    assert seq.finish_reason == "stop" and seq.stop_reason == 5
    seq2 = Sequence("f", [1, 2, 3], SamplingParams(max_tokens=10, min_tokens=2))
    s.add(seq2)
    s.postprocess(s.schedule())
    s.append_token(seq2, 0, EOS)
    assert not seq2.is_finished, "EOS before min_tokens does not stop"
