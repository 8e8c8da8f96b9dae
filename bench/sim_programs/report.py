"""bench/programs.py's report: the markdown page and the steps/min-vs-concurrency plot."""

from __future__ import annotations

import math
import platform
import random
from pathlib import Path

from bench.sim_programs.costmodel import CostModel
from bench.sim_programs.engine import EngineSpec
from bench.sim_programs.fleet import CHARS_PER_TOKEN
from bench.sim_programs.policies.shoal import ShoalPolicy
from bench.sim_programs.real import RealParams, RealStats
from bench.sim_programs.summary import (
    AGING_SLACK_S,
    BASELINE,
    SHOAL,
    TA_CODED,
    TA_INTENDED,
    Check,
    Row,
    check_targets,
    pct,
    ratio,
)
from bench.sim_programs.workload import REGIMES, WorkloadSpec

POLICY_NOTES = {
    "round-robin": "next engine in turn, no admission",
    "sticky (TA default)": "ThunderAgent `default` mode: a program stays on the engine with the fewest programs "
                           "at its start (counted until release), no capacity logic",
    "prefix+load": "llm-d / Dynamo style: precise prefix match x3 + queue depth + free KV, no admission",
    "TA as coded": "ThunderAgent `tr` mode with its code's behaviour: 5 s tick, chars/5 estimate until usage, "
                   "+100/program, worst-fit resume placement, no origin preference, every REASONING program marked, "
                   "shared prefix counted per program, no decay, 1800 s forced resume",
    "TA as intended": "the same with the paper's intent: marking stops once the overflow is covered (marked tokens "
                      "counted), the shared system prompt counted once per engine, ACTING tokens decayed 2^-t",
    "PLAS/LAS": "program-level least attained service: service = prompt + 2 x completion, 60 s half-life; calls "
                "held while every engine has >= 5 waiting or KV >= 80 %, then best 0.8 (1 - service) + 0.2 wait "
                "first; prefix+load placement",
    "continuum": "prefix+load placement, engine queue in program-arrival order, 2 s pin after a call whose tool's "
                 "observed mean is <= 2 s (the public fork's rule)",
    "shoal": "the router's `ProgramScheduler` (router/programs/scheduler.py) with default `ProgramsConfig`, driven "
             "through `bench/sim_programs/policies/shoal.py`; picker = prefix+load among the engines it allows",
}


def scheduler_version() -> str:
    """The commit of router/programs the Shoal row ran (``+ uncommitted changes`` when the tree differs)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "log", "-1", "--format=%h %cd", "--date=format:%Y-%m-%d %H:%M", "--",
                                 "router/programs"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "router/programs"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"`{commit}`" + (" + uncommitted changes" if dirty else "")


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def _tool_quantiles(regime: str, draws: int = 20000) -> tuple[float, float]:
    rng = random.Random(1)
    values = [REGIMES[regime].sample(rng)[1] for _ in range(draws)]
    return pct(values, 50), pct(values, 99)


def plot(sweep_rows: list[Row], path: Path, regime: str, c2x: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for policy in dict.fromkeys(r.policy for r in sweep_rows):
        pts = sorted((r.concurrency, r.steps_per_min) for r in sweep_rows if r.policy == policy)
        ax.plot([c for c, _ in pts], [s for _, s in pts], marker="o", label=policy,
                linewidth=2.5 if policy == SHOAL else 1.2)
    ax.axvline(c2x / 2, color="k", linestyle=":", linewidth=1)
    ax.axvline(c2x, color="k", linestyle="--", linewidth=1)
    ax.text(c2x / 2, ax.get_ylim()[0], " KV full", fontsize=8, va="bottom")
    ax.text(c2x, ax.get_ylim()[0], " 2x", fontsize=8, va="bottom")
    ax.set(title=f"Agent programs on 2 simulated engines ({regime} tools, clients release)",
           xlabel="concurrent programs (C)",
           ylabel="steps / min")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _row_line(r: Row, by: dict[str, Row]) -> str:
    def x(policy: str) -> str:
        return f"{ratio(r.steps_per_min, by[policy].steps_per_min):.2f}" if policy in by else "-"

    return (f"| {r.policy} | {r.steps_per_min:.1f} | {x(BASELINE)} | {x(TA_CODED)} | {x(TA_INTENDED)} | "
            f"{_fmt(r.completion_p50, 0)} / {_fmt(r.completion_p99, 0)} | {r.programs_finished} | {r.hit_rate:.3f} | "
            f"{r.recomputed_tokens / 1000:.0f}k | {r.preemptions} | {r.pauses} | "
            f"{_fmt(r.pause_p50)} / {_fmt(r.pause_p99)} | {_fmt(r.wait_p99)} / {r.longest_wait:.1f} |")


def write_report(
    md: Path, png: Path, *, cost: CostModel, spec: EngineSpec, engines: int, workload: WorkloadSpec, c2x: int,
    duration_s: float, warmup_s: float, sweep_rows: list[Row], matrix_rows: list[Row], command: str, wall_s: float,
    sweep_regime: str, real_check_rows: list[Row], scheduler: str,
) -> None:
    md.parent.mkdir(parents=True, exist_ok=True)
    plot(sweep_rows, png, sweep_regime, c2x)
    max_wait = ShoalPolicy().config.max_wait_s
    w = workload
    lines = [
        "# Program-aware scheduling: Shoal vs the reference policies (simulated fleet)",
        "",
        "These figures come from a SIMULATOR (`bench/sim_programs`), not real engines: a closed loop of agent "
        "programs in virtual time against engines modelled block by block, whose step time is fitted on the real "
        "engine. Shoal's row drives the router's real `ProgramScheduler`; the other policies are rebuilt from "
        "`../shared/references/program-scheduling.md`. Every policy sees identical traces (program i is the same "
        "in every run).",
        "",
        f"- Command: `{command}` ({wall_s:.0f} s wall on {platform.processor() or platform.machine()}, "
        "2 shared cores; results are in virtual time and do not depend on the machine)",
        f"- Shoal's scheduler: router/programs at {scheduler} (when the run started)",
        f"- Cost model (`bench/results/programs-costmodel.json`, `--refit` re-measures): **{cost.describe()}**, "
        f"P = prompt tokens computed in the step, A = attention work (chunk x (prefix + chunk/2) per prompt chunk "
        f"+ context per decode), D = decodes. Fitted on {cost.source}.",
        f"- Fleet: {engines} engines x {spec.num_blocks} KV blocks x {spec.block_size} tokens "
        f"({engines * spec.num_blocks * spec.block_size} tokens in all), token budget {spec.token_budget}/step, "
        "LRU reuse of freed blocks (a call's tail freed first), program pins, recompute preemption of the newest "
        "sequence when a block is missing; pins are given up (oldest first) only when nothing else can run.",
        f"- Workload: shared system prompt {w.system_prompt_tokens} tokens; task {w.task_tokens[0]}-{w.task_tokens[1]}; "
        f"{w.turns[0]}-{w.turns[1]} LLM calls per program; outputs {w.output_tokens[0]}-{w.output_tokens[1]} tokens "
        f"(real agents: 100-500, scaled down for the CPU-fitted costs); tool observations lognormal (median "
        f"{w.observation_median}, sigma {w.observation_sigma}, max {w.observation_max}); each call's prompt is the "
        f"whole context so far; mean context per call {w.mean_context_tokens():.0f} tokens, so the fleet's KV holds "
        f"about {c2x // 2} programs: **2x oversubscription = C {c2x}**. The JSON body a chars/token estimate sees "
        f"is {CHARS_PER_TOKEN} bytes per token.",
        f"- {duration_s:.0f} s of virtual time per run, the first {warmup_s:.0f} s excluded from every figure. "
        f"Seed {workload.seed} (the program traces and tool durations; `--seed` draws others).",
        "- Client modes: `releases` (release after the last call), `never-releases` (stops silently), `crashes` "
        f"({w.crash_fraction:.0%} of programs vanish after a random call; the rest release). A closed loop: a slot "
        "whose program ends or crashes starts the next program at once.",
        "",
        "## Tool-duration regimes",
        "",
        "| regime | tools | p50 (s) | p99 (s) | p99 / p50 |",
        "|---|---|---:|---:|---:|",
    ]
    for name, regime in REGIMES.items():
        p50, p99 = _tool_quantiles(name)
        lines.append(f"| {name} | {regime.description} | {p50:.2f} | {p99:.1f} | {p99 / p50:.0f}x |")
    lines += ["", "## Policies", ""]
    lines += [f"- **{name}**: {note}" for name, note in POLICY_NOTES.items()]
    lines += [
        "",
        "Metrics: a step = one LLM call and the tool call after it (counted when the call's response ends); "
        "completion = program start to its last response (programs started after warm-up); hit rate = prompt tokens "
        "found in the cache at a call's first admission / prompt tokens; recomputed = prompt tokens computed again "
        "that the program had computed before (evicted context, preemptions); pause = a program's time from pause "
        "to resume (still paused at the end: counted to the end; both Shoal and ThunderAgent resume a program "
        "paused in its tool either when its next call is admitted or, without a call, as soon as room frees: Shoal "
        "on any event or deadline, ThunderAgent on its 5 s tick); call wait = time a call was held by the policy before "
        "reaching an engine (p99 over calls, and the longest; still held at the end: counted to the end).",
        "",
        f"## Concurrency sweep ({sweep_regime} tools, clients release)",
        "",
        f"![steps/min vs concurrency]({png.name})",
        "",
    ]
    cs = sorted({r.concurrency for r in sweep_rows})
    policies = list(dict.fromkeys(r.policy for r in sweep_rows))
    lines += ["| policy | " + " | ".join(f"C={c}" for c in cs) + " |", "|---|" + "---:|" * len(cs)]
    for p in policies:
        vals = {r.concurrency: r for r in sweep_rows if r.policy == p}
        lines.append(f"| {p} | " + " | ".join(
            f"{vals[c].steps_per_min:.0f} (hit {vals[c].hit_rate:.2f})" if c in vals else "-" for c in cs) + " |")
    base = {r.concurrency: r.steps_per_min for r in sweep_rows if r.policy == BASELINE}
    if base:
        peak = max(base, key=lambda c: base[c])
        lines += ["", f"Thrashing: the no-admission prefix+load policy peaks at C={peak} "
                  f"({base[peak]:.0f} steps/min); past it, more concurrent programs evict each other's context "
                  "during their tools and the fleet spends its time re-prefilling."]
    lines += ["", f"## At 2x KV oversubscription (C = {c2x})", ""]
    for scenario in dict.fromkeys(r.scenario for r in matrix_rows):
        by = {r.policy: r for r in matrix_rows if r.scenario == scenario}
        lines += [f"### {scenario}", "",
                  "| policy | steps/min | x prefix+load | x TA coded | x TA intended | completion p50 / p99 (s) | "
                  "programs done | hit rate | recomputed | preemptions | pauses | pause p50 / p99 (s) | "
                  "call wait p99 / longest (s) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [_row_line(r, by) for r in by.values()]
        if SHOAL in by and by[SHOAL].policy_counters:
            counters = ", ".join(f"{k} {v:.0f}" if k != "longest wait (s)" else f"{k} {v:.1f}"
                                 for k, v in by[SHOAL].policy_counters)
            lines += ["", f"Shoal scheduler's own counters (whole run): {counters}."]
        lines.append("")
    if real_check_rows:
        by = {r.policy: r for r in real_check_rows}
        real = RealParams()
        lines += ["## The --real run's configuration in the simulator", "",
                  f"The same engines (2 x {real.kv_blocks} blocks, 8 sequences, pins capped at a quarter of the "
                  f"pool as the engine does for one tenant), C = {real.concurrency} and the same program traces as "
                  "`bench/programs.py --real` (`real.simulated_equivalent`): compare its ratios and hit rates with "
                  "`programs-real.md` to see how far the simulator can be trusted (absolute steps/min differ: "
                  "there the engines share 2 cores with the router and the clients).", "",
                  "| policy | steps/min | x prefix+load | x TA coded | x TA intended | completion p50 / p99 (s) | "
                  "programs done | hit rate | recomputed | preemptions | pauses | pause p50 / p99 (s) | "
                  "call wait p99 / longest (s) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [_row_line(r, by) for r in real_check_rows]
        lines.append("")
    checks = check_targets(matrix_rows, max_wait)
    lines += _targets(checks, max_wait)
    md.write_text("\n".join(lines) + "\n")


def write_real_report(
    md: Path, params: RealParams, rounds: dict[str, list[RealStats]], command: str, wall_s: float, scheduler: str,
) -> None:
    """The real-engine run: 2 engines, the policies side by side (rounds pooled)."""
    results = [merge_rounds(runs) for runs in rounds.values() if runs]
    by = {r.policy: r for r in results}
    base, shoal, ta = by.get(BASELINE), by.get(SHOAL), by.get(TA_CODED)
    lines = [
        "# Program-aware scheduling on REAL engines (issue 9)",
        "",
        f"- Command: `{command}` ({wall_s:.0f} s wall on {platform.processor() or platform.machine()}, 2 cores "
        "shared with other work: engines, router and clients compete for them, so absolute figures are noisy)",
        f"- 2 `shoal.engine serve` processes on the bundled SmolLM2-135M (CPU, 1 thread each), {params.kv_blocks} "
        f"KV blocks x 16 tokens each, behind `python -m shoal.router` (precise prefix affinity); fresh processes "
        "for each policy.",
        f"- {params.concurrency} concurrent programs (closed loop) of the simulator's agentic generator "
        f"(`real.workload`, program i identical for every policy): a shared {params.system_tokens}-token system "
        f"prompt, a {params.task_tokens[0]}-{params.task_tokens[1]}-token task, {params.turns[0]}-{params.turns[1]} "
        f"calls of {params.output_tokens} output tokens, each prompt the whole context so far, tool observations "
        f"lognormal (median {params.observation_median}, sigma {params.observation_sigma:g}, max "
        f"{params.observation_max} tokens; tokens sent as words), a program ends at {params.max_context_tokens} "
        f"context tokens; real tool sleeps (lognormal, median {params.tool_median_s:g} s, sigma "
        f"{params.tool_sigma:g}); {params.duration_s:.0f} s per policy, the first {params.warmup_s:.0f} s excluded.",
        f"- Shoal's scheduler: router/programs at {scheduler} (when the run started)",
        "- `shoal`: calls carry `program_id`, programs are released at their end (the router's program scheduler "
        "with its default settings); `prefix+load`: the same calls through the same router without a program (no "
        "admission); `TA as coded`: the simulator's ThunderAgent policy object run as the proxy "
        "(`bench/sim_programs/real_harness.py`, wall-clock 5 s tick, JSON-length estimate, real usage), posting "
        "straight to the engines.",
        "- KV needed / KV = concurrent programs x mean prompt tokens per call / the 2 engines' KV tokens. "
        "Pauses: ThunderAgent's exact durations from the harness; Shoal's from the router's "
        "`shoal_router_program_pause_seconds` histogram (whole run, each pause at its bucket's upper bound, so "
        "its p99 is an upper bound).",
        f"- Rounds: {max(len(v) for v in rounds.values())} (all policies in turn each round, figures pooled; "
        "steps/min per round: " + "; ".join(
            f"{p} " + ", ".join(f"{r.steps_per_min:.1f}" for r in runs) for p, runs in rounds.items()) + ").",
        "",
        "| policy | steps/min | x prefix+load | x TA coded | hit rate | mean prompt (tokens) | KV needed / KV | "
        "programs done | completion p50 (s) | pauses (p99 s) | errors | load avg at end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    kv_tokens = 2 * params.kv_blocks * 16  # 16 tokens per block, as the engines are started
    for r in results:
        x = f"{ratio(r.steps_per_min, base.steps_per_min):.2f}" if base else "-"
        x_ta = f"{ratio(r.steps_per_min, ta.steps_per_min):.2f}" if ta else "-"
        mean_prompt = r.prompt_tokens / r.steps if r.steps else float("nan")
        need = params.concurrency * mean_prompt / kv_tokens
        bound = "<= " if r.pauses_bucketed else ""
        pauses = f"{len(r.pauses)} ({bound}{_fmt(pct(r.pauses, 99))})" if r.pauses else ("0" if r.pauses_bucketed else "-")
        lines.append(f"| {r.policy} | {r.steps_per_min:.1f} | {x} | {x_ta} | {r.hit_rate:.3f} | "
                     f"{_fmt(mean_prompt, 0)} | {_fmt(need, 2)}x | {len(r.completions)} | "
                     f"{_fmt(pct(r.completions, 50))} | {pauses} | {r.errors} | {r.load_avg:.1f} |")
    lines.append("")
    if base and shoal:
        value = ratio(shoal.steps_per_min, base.steps_per_min)
        lines.append(f"- Target (issue 9, real engines): Shoal >= 1.3x steps/min over no-admission: **{value:.2f}x, "
                     f"{'met' if value >= 1.3 else 'NOT met'}**.")
    if ta and shoal:
        value = ratio(shoal.steps_per_min, ta.steps_per_min)
        lines.append(f"- Target: Shoal not below ThunderAgent-as-coded: **{value:.2f}x, "
                     f"{'met' if value >= 1.0 else 'NOT met'}**.")
    md.write_text("\n".join(lines) + "\n")


def merge_rounds(runs: list[RealStats]) -> RealStats:
    """One policy's rounds pooled: counts and windows summed, samples joined, load averaged."""
    out = RealStats(runs[0].policy)
    for r in runs:
        out.steps += r.steps
        out.prompt_tokens += r.prompt_tokens
        out.cached_tokens += r.cached_tokens
        out.errors += r.errors
        out.completions += r.completions
        out.pauses += r.pauses
        out.window_s += r.window_s
        out.pauses_bucketed = out.pauses_bucketed or r.pauses_bucketed
    out.load_avg = sum(r.load_avg for r in runs) / len(runs)
    return out


def _targets(checks: list[Check], max_wait: float) -> list[str]:
    met = sum(c.met for c in checks)
    lines = [
        "## Targets (issue 9, simulator, 2x oversubscription)",
        "",
        f"{met} of {len(checks)} checks met. Aging bound = Shoal's `maxWaitS` default, {max_wait:.0f} s "
        f"(checked with {AGING_SLACK_S * 1000:.0f} ms of timer slack).",
        "",
        "| scenario | target | value | threshold | met |",
        "|---|---|---:|---:|---|",
    ]
    for c in checks:
        note = f" ({c.note})" if c.note else ""
        lines.append(f"| {c.scenario} | {c.target}{note} | {c.value:.2f} | {c.threshold:g} | "
                     f"{'yes' if c.met else '**NO**'} |")
    missed = [c for c in checks if not c.met]
    if missed:
        lines += ["", "Not met: " + "; ".join(f"{c.scenario}: {c.target} = {c.value:.2f}" for c in missed) + "."]
    return lines + [""]
