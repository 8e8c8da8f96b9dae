"""Program-aware scheduling on a simulated fleet: Shoal's scheduler vs the reference policies (issue 9).

Agent programs (LLM calls separated by tool calls) in a closed loop against 2 SIMULATED
engines whose step time is fitted on the real engine (``bench/sim_programs``). Sweeps the
number of concurrent programs to show where thrashing starts, then at 2x KV
oversubscription runs every policy on identical traces in each tool regime x client mode.
Writes ``bench/results/programs.md`` and ``programs.png`` (``programs-quick.*`` with --quick).

    .venv/bin/python bench/programs.py            # full run (~5-10 min on 2 cores)
    .venv/bin/python bench/programs.py --quick    # smoke run (< 60 s)
    .venv/bin/python bench/programs.py --refit    # re-measure the cost model first (~1-2 min)
    .venv/bin/python bench/programs.py --real     # REAL engines + router instead (~13 min a round)
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sim_programs.costmodel import MODEL, CostModel, fit, sweep  # noqa: E402
from bench.sim_programs.engine import EngineSpec  # noqa: E402
from bench.sim_programs.fleet import FleetParams, simulate  # noqa: E402
from bench.sim_programs.policies import POLICIES  # noqa: E402
from bench.sim_programs.report import scheduler_version, write_report  # noqa: E402
from bench.sim_programs.summary import Row  # noqa: E402
from bench.sim_programs.workload import REGIMES, ClientMode, WorkloadSpec  # noqa: E402

RESULTS = ROOT / "bench" / "results"
COST_MODEL = RESULTS / "programs-costmodel.json"
ENGINES = 2
SPEC = EngineSpec(num_blocks=512)
SWEEP_REGIME = "low-variance"


@dataclass(frozen=True)
class Job:
    """One policy on one scenario."""

    scenario: str
    regime: str
    mode: ClientMode
    concurrency: int
    policy: str
    duration_s: float
    warmup_s: float
    seed: int


REAL_CHECK = "as --real"
"""Scenario: the --real run's configuration (engines, KV, workload) in the simulator."""


def run_job(job: Job, cost: CostModel) -> tuple[Job, Row, float]:
    start = time.time()
    if job.scenario == REAL_CHECK:
        from bench.sim_programs.real import RealParams, simulated_equivalent

        workload, spec = simulated_equivalent(RealParams(seed=job.seed), job.mode)
    else:
        workload, spec = WorkloadSpec(regime=job.regime, client_mode=job.mode, seed=job.seed), SPEC
    params = FleetParams(workload, job.concurrency, engines=ENGINES, spec=spec, duration_s=job.duration_s,
                         warmup_s=job.warmup_s)
    stats = simulate(params, cost, POLICIES[job.policy])
    return job, Row.of(job.scenario, job.regime, job.mode.value, job.concurrency, stats), time.time() - start


def load_cost_model(refit: bool) -> CostModel:
    if COST_MODEL.exists() and not refit:
        return CostModel.load(COST_MODEL)
    print(f"fitting the cost model on {MODEL} (prefill and decode sweeps)...", flush=True)
    machine = f"{platform.processor() or platform.machine()}, {platform.system()}"
    model = fit(sweep(), f"{MODEL} on the CPU engine ({machine})")
    model.save(COST_MODEL)
    return model


def oversubscribed(workload: WorkloadSpec, factor: float) -> int:
    """Concurrency at which the programs' mean context needs ``factor`` x the fleet's KV."""
    kv_tokens = ENGINES * SPEC.num_blocks * SPEC.block_size
    return max(1, round(factor * kv_tokens / workload.mean_context_tokens()))


def run_real(args: argparse.Namespace) -> int:
    from bench.sim_programs.real import POLICIES as REAL_POLICIES
    from bench.sim_programs.real import RealParams, RealStats, run_policy
    from bench.sim_programs.report import scheduler_version, write_real_report

    if args.real_concurrency < 1 or args.real_duration <= 60 or args.real_rounds < 1:
        print("--real-concurrency and --real-rounds must be >= 1, --real-duration > 60", file=sys.stderr)
        return 2
    params = RealParams(concurrency=args.real_concurrency, duration_s=args.real_duration,
                        warmup_s=min(60.0, args.real_duration / 4), seed=args.seed)
    started = time.time()
    scheduler = scheduler_version()
    rounds: dict[str, list[RealStats]] = {p: [] for p in REAL_POLICIES}
    for round_no in range(args.real_rounds):  # policies in turn, so slow drifts of the machine's load hit all
        for policy in REAL_POLICIES:
            stats = run_policy(policy, params)
            rounds[policy].append(stats)
            print(f"real round {round_no + 1} {policy:12s} {stats.steps_per_min:6.1f} steps/min  "
                  f"hit {stats.hit_rate:.2f}  programs done {len(stats.completions)}  errors {stats.errors}  "
                  f"load {stats.load_avg:.1f}", flush=True)
    command = "python bench/programs.py " + " ".join(sys.argv[1:])
    out = RESULTS / args.real_output
    write_real_report(out, params, rounds, command.strip(), time.time() - started, scheduler)
    print(f"wrote {out} ({time.time() - started:.0f} s)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (< 60 s)")
    parser.add_argument("--refit", action="store_true", help=f"re-measure the cost model (else reuse {COST_MODEL.name})")
    parser.add_argument("--jobs", type=int, default=1, help="simulations run in parallel processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset")
    parser.add_argument("--real", action="store_true",
                        help="2 real engines (bundled model, small KV) behind the real router, real tool sleeps")
    parser.add_argument("--real-concurrency", type=int, default=12)
    parser.add_argument("--real-duration", type=float, default=240.0, help="seconds per policy (real mode)")
    parser.add_argument("--real-rounds", type=int, default=1, help="rounds of all policies in turn (real mode)")
    parser.add_argument("--real-output", default="programs-real.md", help="report name under bench/results (real mode)")
    args = parser.parse_args()
    if args.real:
        return run_real(args)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        parser.error(f"unknown policy {unknown[0]!r}; choose from: {', '.join(POLICIES)}")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    started = time.time()
    scheduler = scheduler_version()
    cost = load_cost_model(args.refit)
    print(f"cost model: {cost.describe()}  [{cost.source}]", flush=True)

    base = WorkloadSpec(regime=SWEEP_REGIME, seed=args.seed)
    c2x = oversubscribed(base, 2.0)
    if args.quick:
        duration, warmup = 600.0, 120.0
        sweep_cs = [max(1, c2x // 4), c2x]
        scenarios = [("heavy-tail", ClientMode.RELEASES), ("low-variance", ClientMode.NEVER_RELEASES)]
    else:
        duration, warmup = 1800.0, 300.0
        sweep_cs = sorted({max(1, round(c2x * f)) for f in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)})
        scenarios = [(regime, mode) for regime in REGIMES for mode in ClientMode]
    jobs = [Job(f"sweep C={c}", SWEEP_REGIME, ClientMode.RELEASES, c, p, duration, warmup, args.seed)
            for c in sweep_cs for p in policies]
    jobs += [Job(f"{regime} / {mode.value}", regime, mode, c2x, p, duration, warmup, args.seed)
             for regime, mode in scenarios for p in policies]
    if not args.quick:
        from bench.sim_programs.real import POLICIES as REAL_POLICIES
        from bench.sim_programs.real import RealParams

        jobs += [Job(REAL_CHECK, "real", ClientMode.RELEASES, RealParams().concurrency, p, duration, warmup, args.seed)
                 for p in REAL_POLICIES if p in policies]
    rows: dict[Job, Row] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for job, row, wall in pool.map(run_job, jobs, [cost] * len(jobs)):
            rows[job] = row
            print(f"{job.scenario:34s} C={job.concurrency:<3d} {job.policy:20s} {row.steps_per_min:7.1f} steps/min"
                  f"  hit {row.hit_rate:.2f}  recomputed {row.recomputed_tokens:>8d}  pauses {row.pauses:>4d}"
                  f"  p99 pause {row.pause_p99:6.1f} s  longest wait {row.longest_wait:6.1f} s  [{wall:.1f}s]",
                  flush=True)
    sweep_rows = [rows[j] for j in jobs if j.scenario.startswith("sweep")]
    matrix_rows = [rows[j] for j in jobs if not j.scenario.startswith("sweep") and j.scenario != REAL_CHECK]
    real_check_rows = [rows[j] for j in jobs if j.scenario == REAL_CHECK]
    name = "programs-quick" if args.quick else "programs"
    command = "python bench/programs.py " + " ".join(sys.argv[1:])
    write_report(RESULTS / f"{name}.md", RESULTS / f"{name}.png", cost=cost, spec=SPEC, engines=ENGINES,
                 workload=base, c2x=c2x, duration_s=duration, warmup_s=warmup, sweep_rows=sweep_rows,
                 matrix_rows=matrix_rows, command=command.strip(), wall_s=time.time() - started,
                 sweep_regime=SWEEP_REGIME, real_check_rows=real_check_rows, scheduler=scheduler)
    print(f"wrote {RESULTS / (name + '.md')} and {name}.png ({time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
