"""Serving benchmark: latency vs request rate, multi-turn programs, and HTTP overhead vs offline.

    python bench/serve.py                      # bundled SmolLM2-135M, ~10 min on 2 CPU cores
    python bench/serve.py --num-requests 64 --rates 0.5,1,2,inf --arrival gamma --burstiness 0.5

Starts ``python -m shoal.engine serve`` on 127.0.0.1 (or uses ``--url``), then:

1. saturation: every request at once -> the max request rate;
2. a sweep at fractions of it (Poisson or Gamma/bursty arrivals) -> TTFT/TPOT/ITL p50/p90/p99,
   throughput and goodput under an SLO, plus latency-vs-rate PNGs;
3. multi-turn conversations carrying a program_id (KV kept between turns);
4. overhead: the same fixed workload through HTTP at saturation vs ``LLM.generate`` offline.

Writes ``bench/results/serve-cpu.md`` and the PNGs next to it. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/loadgen, also under PYTHONSAFEPATH

from loadgen.client import send_plain, send_streaming
from loadgen.phases import multi_turn, open_loop
from loadgen.report import Overhead, attribution, machine, overhead_section, plot, summary_table
from loadgen.stats import RunSummary, Slo, percentile, summarize
from loadgen.workload import (
    LengthDist,
    RequestSpec,
    arrival_gaps,
    completion_requests,
)
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shoal.engine.tokenizer import Tokenizer

RESULTS = Path(__file__).parent / "results"
# One torch thread: on a shared 2-core box, 2 OpenMP threads ran the model ~5x slower on the
# main thread (spinning barriers under contention); 1 thread is also what the server thread gets.
DEFAULT_ENGINE_ARGS = "--max-model-len 2048 --max-num-seqs 32 --max-num-batched-tokens 512 --num-threads 1"
console = Console()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bundled:smollm2-135m-instruct")
    p.add_argument("--url", default=None, help="use a running server on 127.0.0.1 instead of starting one")
    p.add_argument("--engine-args", default=DEFAULT_ENGINE_ARGS, help="engine flags for the server and offline run")
    p.add_argument("--num-requests", type=int, default=20, help="requests per rate point")
    p.add_argument("--prompt-len", type=LengthDist.parse, default=LengthDist.parse("uniform:16:96"))
    p.add_argument("--output-len", type=LengthDist.parse, default=LengthDist.parse("uniform:8:32"))
    p.add_argument("--arrival", choices=["poisson", "gamma"], default="poisson")
    p.add_argument("--burstiness", type=float, default=0.5, help="gamma shape (<1: burstier than Poisson)")
    p.add_argument("--rates", default="auto", help="comma list of req/s ('inf' = all at once) or 'auto'")
    p.add_argument("--rate-fractions", default="0.3,0.6,0.9", help="'auto' sweep points, x saturation rate")
    p.add_argument("--bursty-check", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the middle rate with Gamma arrivals (--burstiness) to show burst cost")  # fmt: skip
    p.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True,
                   help="saturation + rate sweep (--no-sweep: only multi-turn and/or overhead)")  # fmt: skip
    p.add_argument("--conversations", type=int, default=4, help="multi-turn conversations (0: skip)")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--conversation-rate", type=float, default=0.5, help="new conversations per second")
    p.add_argument("--slo-ttft", type=float, default=2.0, help="goodput SLO on time to first token (s)")
    p.add_argument("--slo-tpot", type=float, default=0.25, help="goodput SLO on time per output token (s)")
    p.add_argument("--overhead", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--overhead-requests", type=int, default=16)
    p.add_argument("--overhead-prompt-len", type=int, default=64)
    p.add_argument("--overhead-output-len", type=int, default=32)
    p.add_argument("--overhead-repeats", type=int, default=5, help="alternating HTTP / offline rounds")
    p.add_argument("--out", type=Path, default=RESULTS / "serve-cpu.md")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ---------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def engine_server(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        if not args.url.startswith(("http://127.0.0.1", "http://localhost")):
            raise SystemExit("--url must point at 127.0.0.1")
        yield args.url.rstrip("/")
        return
    port = _free_port()
    cmd = [sys.executable, "-m", "shoal.engine", "serve", "--model", args.model, "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--max-waiting", "100000",
           *shlex.split(args.engine_args)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def scrape(url: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def load_offline(args: argparse.Namespace) -> Any:
    """``LLM`` with the server's engine flags, its ``step()`` timed (for the overhead comparison)."""
    from shoal.engine.cli_args import add_engine_args, engine_config_from_args
    from shoal.engine.llm import LLM

    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    config = engine_config_from_args(parser.parse_args(["--model", args.model, *shlex.split(args.engine_args)]))
    llm = LLM(config.model, **{f.name: getattr(config, f.name) for f in fields(config) if f.name != "model"})
    step = llm.engine.step
    llm.timing = {"steps": 0, "busy": 0.0}

    def timed_step() -> Any:
        t0 = time.perf_counter()
        out = step()
        llm.timing["busy"] += time.perf_counter() - t0
        llm.timing["steps"] += 1
        return out

    llm.engine.step = timed_step
    return llm


def offline_run(llm: Any, prompts: list[list[int]], output_len: int) -> tuple[float, int, float, int]:
    """``LLM.generate`` on the workload: (wall s, steps, seconds in step(), output tokens)."""
    from shoal.engine.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0.0)
    llm.timing.update(steps=0, busy=0.0)
    start = time.perf_counter()
    results = llm.generate(prompt_token_ids=prompts, params=params)
    wall = time.perf_counter() - start
    return wall, int(llm.timing["steps"]), float(llm.timing["busy"]), sum(r.usage.completion_tokens for r in results)


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    slo = Slo(args.slo_ttft, args.slo_tpot)
    started = time.time()
    host_info = machine()
    summaries: list[RunSummary] = []
    turn_rows: list[tuple[int, float, float, float]] = []
    multi_summary: RunSummary | None = None
    http_overhead: dict[str, list[tuple[float, int, float, float]]] = {}
    overhead: Overhead | None = None
    n_points = len(args.rate_fractions.split(",")) if args.rates == "auto" else len(args.rates.split(","))
    n_sweep = (1 + n_points + int(args.bursty_check and args.arrival == "poisson")) * int(args.sweep)
    n_total = (2 + args.num_requests * n_sweep
               + args.conversations * args.turns + 3 * args.overhead_requests * args.overhead_repeats * int(args.overhead))  # fmt: skip
    with engine_server(args) as url:
        card = httpx.get(url + "/v1/models").json()["data"][0]
        model = card["id"]
        tokenizer = Tokenizer.from_payload(httpx.get(url + "/shoal/tokenizer").json())
        vocab = (256, min(tokenizer.vocab_size, 32000))  # plain tokens: no specials at either end
        columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            overall = progress.add_task("all requests", total=n_total)

            def phase(label: str, specs: list[RequestSpec], gaps: list[float], rate: float,
                      send: Any = send_streaming) -> RunSummary:  # fmt: skip
                task = progress.add_task(label, total=len(specs))

                def advance() -> None:
                    progress.advance(task)
                    progress.advance(overall)

                results, wall = asyncio.run(open_loop(url, specs, gaps, advance, send))
                return summarize(label, rate, results, wall, slo)

            def workload(n: int) -> list[RequestSpec]:
                return completion_requests(n, args.prompt_len, args.output_len, model, rng, vocab)

            # warm-up (first-request costs: allocations, caches)
            phase("warm-up", workload(2), [0.0, 0.0], math.inf)
            if args.sweep:
                saturation = phase("saturation", workload(args.num_requests), [0.0] * args.num_requests, math.inf)
                summaries.append(saturation)
                if args.rates == "auto":
                    rates = [float(f) * saturation.request_throughput for f in args.rate_fractions.split(",")]
                else:
                    rates = [float(r) for r in args.rates.split(",")]
                for rate in rates:
                    specs = workload(args.num_requests)
                    gaps = arrival_gaps(len(specs), rate, args.arrival, args.burstiness, rng)
                    summaries.append(phase(f"{args.arrival} {rate:.2f} req/s", specs, gaps, rate))
                if args.bursty_check and rates and args.arrival == "poisson":
                    rate = rates[len(rates) // 2]
                    specs = workload(args.num_requests)
                    gaps = arrival_gaps(len(specs), rate, "gamma", args.burstiness, rng)
                    summaries.append(phase(f"gamma({args.burstiness:g}) {rate:.2f} req/s", specs, gaps, rate))
            if args.conversations:
                task = progress.add_task("multi-turn", total=args.conversations * args.turns)

                def advance_mt() -> None:
                    progress.advance(task)
                    progress.advance(overall)

                results, wall = asyncio.run(multi_turn(url, model, args, rng, advance_mt))
                multi_summary = summarize("multi-turn", args.conversation_rate, results, wall, slo)
                for turn in range(args.turns):
                    rs = [r for r in results if r.ok and r.turn == turn]
                    cached = sum(r.cached_tokens for r in rs) / max(sum(r.prompt_tokens for r in rs), 1)
                    turn_rows.append((turn + 1, percentile([r.ttft for r in rs], 50),
                                      sum(r.prompt_tokens for r in rs) / max(len(rs), 1), cached))  # fmt: skip
            if args.overhead:
                # The offline engine is loaded while the server idles, then both paths alternate so
                # drifting load from other processes on the machine hits them alike.
                progress.console.print("loading the offline engine (LLM) for the overhead comparison...")
                llm = load_offline(args)
                prompts = [[rng.randrange(*vocab) for _ in range(args.overhead_prompt_len)]
                           for _ in range(args.overhead_requests)]  # fmt: skip
                specs = [RequestSpec("/v1/completions", {"model": model, "prompt": p, "ignore_eos": True,
                         "max_tokens": args.overhead_output_len, "temperature": 0.0},
                         len(p), args.overhead_output_len) for p in prompts]  # fmt: skip
                offline_run(llm, prompts[:2], args.overhead_output_len)  # warm-up
                offline: list[tuple[float, int, float]] = []
                out_tokens = 0
                for rep in range(args.overhead_repeats):
                    for mode, send in (("streamed", send_streaming), ("non-streamed", send_plain)):
                        before = scrape(url)
                        cpu0 = time.process_time()
                        result = phase(f"overhead HTTP {mode} #{rep + 1}", specs, [0.0] * len(specs), math.inf, send)
                        cpu = time.process_time() - cpu0
                        after = scrape(url)
                        steps = int(after["shoal:engine_steps_total"] - before["shoal:engine_steps_total"])
                        busy = after["shoal:engine_busy_seconds_total"] - before["shoal:engine_busy_seconds_total"]
                        http_overhead.setdefault(mode, []).append((result.duration_s, steps, busy, cpu))
                    wall, steps, busy, out_tokens = offline_run(llm, prompts, args.overhead_output_len)
                    offline.append((wall, steps, busy))
                    progress.advance(overall, len(specs))
                overhead = Overhead(offline, out_tokens, http_overhead)
    write_report(args, argv, host_info, started, summaries, multi_summary, turn_rows, overhead)
    return 0


def write_report(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    host_info: str,
    started: float,
    summaries: list[RunSummary],
    multi: RunSummary | None,
    turn_rows: list[tuple[int, float, float, float]],
    overhead: Overhead | None,
) -> None:
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    pngs = plot([s for s in summaries if not s.label.startswith("gamma")], out.parent, out.stem) if summaries else []
    command = "python bench/serve.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    lines = [
        "# Serving benchmark (CPU)",
        "",
        f"- machine: {host_info}",
        f"- command: `{command.strip()}`",
        f"- model: `{args.model}`; engine flags: `{args.engine_args}`",
        f"- workload: prompt {args.prompt_len} tokens (token-id prompts), output {args.output_len} tokens "
        f"(`ignore_eos`), {args.num_requests} requests per point, arrivals {args.arrival}"
        + (f" (gamma shape {args.burstiness:g})" if args.arrival == "gamma" else ""),
        f"- SLO for goodput: TTFT <= {args.slo_ttft:g} s and TPOT <= {args.slo_tpot:g} s",
        f"- total benchmark time: {time.time() - started:.0f} s",
        "- small request counts keep a run under ~10 minutes on 2 shared cores: percentiles, p99 above all, are"
        " indicative only.",
        "",
        "## Latency and throughput vs request rate",
        "",
        summary_table(summaries),
        "",
        *[f"![{p.stem}]({p.name})" for p in pngs],
        "",
    ]
    if multi is not None:
        lines += [
            "## Multi-turn conversations (program_id + retention)",
            "",
            f"{args.conversations} conversations x {args.turns} turns, new conversations at "
            f"{args.conversation_rate:g}/s; each turn resends the whole history.",
            "",
            summary_table([multi]),
            "",
            "| turn | TTFT p50 ms | mean prompt tokens | prompt tokens served from cache |",
            "|---|---|---|---|",
            *[f"| {t} | {ttft * 1000:.0f} | {p:.0f} | {c * 100:.0f}% |" for t, ttft, p, c in turn_rows],
            "",
        ]
    if overhead is not None:
        lines += [
            "## Serving overhead: HTTP at saturation vs offline `LLM.generate`",
            "",
            f"{args.overhead_requests} requests, prompt {args.overhead_prompt_len} tokens, output "
            f"{args.overhead_output_len} tokens, all sent at once; the same engine flags on both paths.",
            "",
            overhead_section(overhead),
            "",
            *[f"- {attribution(overhead, mode)}" for mode in overhead.http],
            "",
        ]
    out.write_text("\n".join(lines))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
