"""The program-scheduling simulator (bench/sim_programs): block conservation, deterministic
workloads, and every policy (Shoal's real scheduler included) completing a tiny trace."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.sim_programs.costmodel import CostModel, Sample, fit
from bench.sim_programs.engine import EngineSpec, ProgramKV, SimCall, SimEngine
from bench.sim_programs.fleet import Fleet, FleetParams, simulate
from bench.sim_programs.policies import POLICIES
from bench.sim_programs.policies.thunderagent import TAProgram, ThunderAgent
from bench.sim_programs.workload import REGIMES, ClientMode, WorkloadSpec

COST = CostModel(t0=0.04, kp=0.002, ka=2.7e-6, kd=0.004)
TINY = EngineSpec(num_blocks=96, token_budget=256)


def tiny(policy: str, mode: ClientMode = ClientMode.RELEASES, concurrency: int = 6, check: bool = True):
    workload = WorkloadSpec(regime="bimodal", client_mode=mode, system_prompt_tokens=64, task_tokens=(16, 48),
                            turns=(2, 4), output_tokens=(4, 12), observation_median=24, observation_max=96)
    params = FleetParams(workload, concurrency, engines=2, spec=TINY, duration_s=240.0, warmup_s=20.0,
                         check_blocks=check)
    return simulate(params, COST, POLICIES[policy])


def test_workload_is_deterministic_per_seed_and_index() -> None:
    a, b = WorkloadSpec(regime="heavy-tail", seed=3), WorkloadSpec(regime="heavy-tail", seed=3)
    assert [a.program(i) for i in range(20)] == [b.program(i) for i in range(20)]
    assert a.program(5) != WorkloadSpec(regime="heavy-tail", seed=4).program(5)
    # a program is the same whatever was drawn before it (identical traces across runs)
    assert a.program(7) == WorkloadSpec(regime="heavy-tail", seed=3).program(7)
    trace = a.program(0)
    for prev, nxt in zip(trace.turns, trace.turns[1:], strict=False):
        assert nxt.prompt_tokens == prev.prompt_tokens + prev.output_tokens + prev.observation_tokens
    assert trace.turns[-1].tool is None


def test_heavy_tail_regime_has_p99_at_least_50x_median() -> None:
    import random

    rng = random.Random(0)
    values = sorted(REGIMES["heavy-tail"].sample(rng)[1] for _ in range(20000))
    assert values[int(0.99 * len(values))] >= 50 * values[len(values) // 2]


def test_client_modes() -> None:
    never = WorkloadSpec(client_mode=ClientMode.NEVER_RELEASES)
    crashes = WorkloadSpec(client_mode=ClientMode.CRASHES, crash_fraction=0.5)
    assert not any(never.program(i).releases for i in range(50))
    crashed = [crashes.program(i) for i in range(200)]
    assert 60 < sum(p.crashes_after is not None for p in crashed) < 140
    assert all(p.releases == (p.crashes_after is None) for p in crashed)
    with pytest.raises(ValueError, match="unknown regime"):
        WorkloadSpec(regime="nope")


def test_engine_conserves_blocks_with_pins_and_preemption() -> None:
    engine = SimEngine("e", EngineSpec(num_blocks=24, token_budget=64), COST)
    calls = [SimCall(i, ProgramKV(i), 100 + 20 * i, 40, shared_tokens=32) for i in range(4)]
    for call in calls:
        engine.add(call)
    now, finished = 0.0, list[SimCall]()
    while len(finished) < len(calls):
        end = engine.start_step(now)
        assert end is not None, "engine stalled with work left"
        now = end
        for call in engine.finish_step():
            engine.release(call, now, retention_s=5.0 if call.cid % 2 else None)
            finished.append(call)
        engine.check_blocks()
    assert engine.preemptions > 0, "the pool is too small for all four: someone must be preempted"
    assert sum(c.recomputed_tokens for c in calls) > 0
    assert engine.pinned_blocks > 0
    engine.unpin(1)
    engine.unpin(3)
    engine.check_blocks()
    assert engine.used_blocks == 0 and engine.free_blocks == 24


def test_next_turn_hits_its_pinned_prefix() -> None:
    engine = SimEngine("e", EngineSpec(num_blocks=64), COST)
    kv = ProgramKV(0)
    first = SimCall(0, kv, 100, 20, shared_tokens=0)
    engine.add(first)
    now = 0.0
    while not (done := engine.finish_step() if engine.start_step(now) else []):
        now += 1
    engine.release(done[0], now, retention_s=10.0)
    second = SimCall(1, kv, 150, 5, shared_tokens=0)
    engine.add(second)
    engine.start_step(now)
    assert second.hit_tokens == 112  # 7 full blocks of prompt + output (119 tokens)
    assert second.recomputed_tokens == 0


@pytest.mark.parametrize("policy", list(POLICIES))
def test_each_policy_completes_a_tiny_trace(policy: str) -> None:
    stats = tiny(policy)
    assert stats.programs_finished > 0
    assert stats.steps > 0
    assert 0.0 < stats.hit_rate <= 1.0


def test_runs_are_deterministic() -> None:
    a, b = tiny("shoal", check=False), tiny("shoal", check=False)
    assert (a.steps, a.hit_tokens, a.recomputed_tokens, a.pauses) == (b.steps, b.hit_tokens, b.recomputed_tokens,
                                                                       b.pauses)


def test_thunderagent_as_coded_marks_every_reasoning_program_and_intended_stops_at_the_overflow() -> None:
    marked = {}
    for intended in (False, True):
        stats_policy = ThunderAgent(intended=intended)
        Fleet(FleetParams(WorkloadSpec(), 1, engines=1, spec=EngineSpec(num_blocks=64)), COST, stats_policy)
        # five reasoning programs of 500 tokens (+100 each) on a 1024-token engine
        for i in range(5):
            stats_policy.programs[i] = TAProgram(i, tokens=500.0, engine=0, admitted=True)
        stats_policy._pause_engine(0, now=0.0)
        marked[intended] = sum(p.marked for p in stats_policy.programs.values())
    assert marked[False] == 5
    # intended: 3000 - 4 x 256 shared = 1976 tokens, 952 over: two programs (2 x 600) cover it
    assert marked[True] == 2


def test_shoal_runs_the_real_scheduler_and_holds_calls_under_pressure() -> None:
    stats = tiny("shoal", concurrency=30, check=False)
    # 30 programs on 2 x 96 blocks need more KV than there is: calls wait for room (new
    # programs for room for their expected growth, paused ones to resume), none is refused
    assert max(stats.queue_waits) > 1.0 and stats.policy_counters["longest wait (s)"] > 1.0
    assert stats.rejected == 0


def test_cost_model_fit_recovers_known_constants() -> None:
    truth = CostModel(t0=0.03, kp=0.002, ka=1e-6, kd=0.005)
    samples = [Sample(p, p * (x + p / 2), 0, truth.step_time(p, p * (x + p / 2), 0))
               for p in (32, 128, 512) for x in (0, 256)]
    samples += [Sample(0, d * c, d, truth.step_time(0, d * c, d)) for d in (1, 8, 32) for c in (64, 512)]
    got = fit(samples, "synthetic")
    for name in ("t0", "kp", "ka", "kd"):
        assert getattr(got, name) == pytest.approx(getattr(truth, name), rel=1e-6)


def test_real_report_pools_rounds_and_states_the_targets(tmp_path: Path) -> None:
    from bench.sim_programs.real import RealParams, RealStats
    from bench.sim_programs.report import write_real_report

    def stats(policy: str, steps: int) -> RealStats:
        return RealStats(policy, steps=steps, prompt_tokens=400 * steps, cached_tokens=300 * steps,
                         completions=[60.0], window_s=120.0, load_avg=2.0)

    rounds = {"prefix+load": [stats("prefix+load", 100), stats("prefix+load", 60)],
              "TA as coded": [stats("TA as coded", 120), stats("TA as coded", 120)],
              "shoal": [stats("shoal", 150), stats("shoal", 150)]}
    md = tmp_path / "real.md"
    write_real_report(md, RealParams(), rounds, "cmd", 1.0, "`abc`")
    text = md.read_text()
    assert "| shoal | 75.0 | 1.88 | 1.25 | 0.750 | 400 |" in text  # 300 steps over 240 s; 160 for prefix+load
    assert "**1.88x, met**" in text and "**1.25x, met**" in text
    assert "prefix+load 50.0, 30.0" in text


def test_simulated_equivalent_of_the_real_run_matches_its_shape() -> None:
    from bench.sim_programs.real import RealParams, program, simulated_equivalent

    params = RealParams()
    workload, spec = simulated_equivalent(params)
    assert spec.num_blocks == params.kv_blocks
    trace = workload.program(3)
    assert params.turns[0] <= len(trace.turns) <= params.turns[1]
    assert {t.tool for t in trace.turns[:-1]} == {"tool"}
    assert all(t.output_tokens == params.output_tokens for t in trace.turns)
    assert max(t.prompt_tokens for i in range(200) for t in workload.program(i).turns) <= params.max_context_tokens
    assert spec.pin_quota_blocks == params.kv_blocks // 4  # the engine's default per-tenant pin quota
    # what the real client plays is that trace: one word per token, the same tool sleeps
    played = program(params, 3)
    assert played.turns == len(trace.turns)
    assert played.tool_s == tuple(t.tool_s for t in trace.turns[:-1])
    assert [len(o.split()) - 1 for o in played.observations] == [t.observation_tokens for t in trace.turns[:-1]]
    # 2x oversubscribed: the programs' mean context x C is about twice the 2 engines' KV
    assert 1.8 < params.concurrency * workload.mean_context_tokens() / (2 * params.kv_blocks * 16) < 2.2


def test_router_pause_histogram_becomes_one_bound_per_pause() -> None:
    from bench.sim_programs.real import router_pauses

    text = "\n".join([
        'shoal_router_program_pause_seconds_bucket{class="default",le="1.0"} 2.0',
        'shoal_router_program_pause_seconds_bucket{class="default",le="5.0"} 3.0',
        'shoal_router_program_pause_seconds_bucket{class="default",le="+Inf"} 4.0',
        'shoal_router_program_pause_seconds_bucket{class="other",le="1.0"} 1.0',
        'shoal_router_program_pause_seconds_bucket{class="other",le="5.0"} 1.0',
        'shoal_router_program_pause_seconds_bucket{class="other",le="+Inf"} 1.0',
        'shoal_router_program_pause_seconds_count{class="default"} 4.0',
    ])
    assert router_pauses(text) == [1.0, 1.0, 1.0, 5.0, float("inf")]
