"""REAL engines (not simulated): agent programs through the real router against 2 engines.

Two ``python -m shoal.engine serve`` processes on the bundled model with small KV pools
and ``python -m shoal.router`` in front (precise prefix affinity), restarted for each
policy so no cache carries over. C clients play programs in a closed loop: a shared
system prompt, a task, then calls whose prompt is the whole conversation, separated by
real tool sleeps (lognormal). ``shoal`` sends ``program_id`` and releases each program
at its end (the router's program scheduler admits, pauses, resumes and pins);
``prefix+load`` sends the same calls without a program (no admission); ``TA as coded``
runs the simulator's ThunderAgent policy as the proxy (``real_harness.py``) straight to the
engines. Program ``i`` is the same for every policy (seeded by its index).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.sim_programs.engine import EngineSpec
from bench.sim_programs.policies.thunderagent import ThunderAgent
from bench.sim_programs.real_harness import RealHarness
from bench.sim_programs.workload import ClientMode, Regime, ToolDist, WorkloadSpec
from tests.support.processes import wait_healthy

MODEL = "bundled:smollm2-135m-instruct"
SERVED = "smollm2"
WORDS = ("file", "test", "error", "function", "module", "import", "value", "return", "class", "patch", "line",
         "assert", "config", "build", "output", "trace", "repo", "branch", "commit", "diff", "parser", "token",
         "buffer", "cache", "socket", "thread", "queue", "method", "object", "string")
POLICIES = ("prefix+load", "TA as coded", "shoal")


@dataclass(frozen=True)
class RealParams:
    """One real run (every policy uses the same). The programs are ``workload(params)``'s traces,
    the simulator's agentic generator at the sizes below (tokens played as words, about one
    token each through the bundled tokenizer)."""

    concurrency: int = 12
    duration_s: float = 240.0
    warmup_s: float = 40.0
    kv_blocks: int = 128
    """KV blocks per engine (16 tokens each): small, so the programs need about 2x what exists."""
    system_tokens: int = 256
    task_tokens: tuple[int, int] = (32, 128)
    turns: tuple[int, int] = (4, 10)
    output_tokens: int = 16
    """Per call (real agents: 100-500; scaled down for 1-thread CPU engines)."""
    observation_median: int = 64
    observation_sigma: float = 0.8
    observation_max: int = 256
    max_context_tokens: int = 1536
    """A program ends at this context (3/4 of one engine's pool), as agents stop at their limit."""
    tool_median_s: float = 1.0
    tool_sigma: float = 0.6
    seed: int = 0


@dataclass(frozen=True)
class RealProgram:
    task: str
    observations: tuple[str, ...]
    tool_s: tuple[float, ...]
    output_tokens: tuple[int, ...]

    @property
    def turns(self) -> int:
        return len(self.observations) + 1


def workload(params: RealParams, mode: ClientMode = ClientMode.RELEASES) -> WorkloadSpec:
    """The simulator's agentic workload at this run's sizes, with its single lognormal tool."""
    tools = Regime("real", (("tool", 1.0, ToolDist(params.tool_median_s, params.tool_sigma)),),
                   f"lognormal, median {params.tool_median_s:g} s, sigma {params.tool_sigma:g}")
    return WorkloadSpec(regime="real", client_mode=mode, seed=params.seed, tools=tools,
                        system_prompt_tokens=params.system_tokens, task_tokens=params.task_tokens,
                        turns=params.turns, output_tokens=(params.output_tokens, params.output_tokens),
                        observation_median=params.observation_median, observation_sigma=params.observation_sigma,
                        observation_max=params.observation_max, max_context_tokens=params.max_context_tokens)


def simulated_equivalent(params: RealParams, mode: ClientMode = ClientMode.RELEASES) -> tuple[WorkloadSpec, EngineSpec]:
    """The simulator's workload and engine for this real run, to check the simulator against it:
    the same traces, the same pool, 8 sequences and the engine's default pin quota (a quarter of
    the pool for the one tenant all programs share)."""
    return workload(params, mode), EngineSpec(num_blocks=params.kv_blocks, max_seqs=8,
                                              pin_quota_blocks=params.kv_blocks // 4)


def program(params: RealParams, index: int) -> RealProgram:
    """Trace ``index`` of ``workload(params)`` as text: each token of the trace becomes a word."""
    trace = workload(params).program(index)
    rng = random.Random(f"real:{params.seed}:{index}")

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, n)))

    first = trace.turns[0]
    tool_turns = [t for t in trace.turns if t.tool is not None]
    return RealProgram(
        task=f"Task {index}: " + words(first.prompt_tokens - params.system_tokens),
        observations=tuple("Observation: " + words(t.observation_tokens) for t in tool_turns),
        tool_s=tuple(t.tool_s for t in tool_turns),
        output_tokens=tuple(t.output_tokens for t in trace.turns),
    )


def system_prompt(params: RealParams) -> str:
    rng = random.Random(f"real-system:{params.seed}")
    return "You are a coding agent. " + " ".join(rng.choice(WORDS) for _ in range(params.system_tokens))


@dataclass
class RealStats:
    policy: str
    steps: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    errors: int = 0
    completions: list[float] = field(default_factory=list)
    pauses: list[float] = field(default_factory=list)
    window_s: float = 0.0
    load_avg: float = 0.0
    """The machine's 1-minute load average at the end of the run (other work shares the cores)."""
    pauses_bucketed: bool = False
    """``pauses`` are the router's histogram bucket bounds (each pause <= its value), not exact."""

    @property
    def steps_per_min(self) -> float:
        return 60.0 * self.steps / self.window_s if self.window_s else 0.0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


READY_TIMEOUT_S = 240.0
"""Bundled-model engines on shared cores can take minutes to come up."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def servers(params: RealParams, workdir: Path) -> Iterator[tuple[str, list[str]]]:
    """2 engines + 1 router as processes on 127.0.0.1; yields the router's and the engines' URLs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONSAFEPATH": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        urls = []
        for i in range(2):
            port, log = _free_port(), workdir / f"engine{i}.log"
            with log.open("ab") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "shoal.engine", "serve", "--model", MODEL, "--served-model-name", SERVED,
                     "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--num-threads", "1",
                     "--num-kv-blocks", str(params.kv_blocks), "--block-size", "16", "--max-num-seqs", "8",
                     "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT, env=env))
            urls.append((f"http://127.0.0.1:{port}", procs[-1], log))
        for url, proc, log in urls:
            wait_healthy(url, proc, log, READY_TIMEOUT_S)
        port = _free_port()
        config = {
            "listen": {"host": "127.0.0.1", "port": port},
            "logLevel": "warning",
            "pools": [{"name": "chat", "models": [SERVED], "endpoints": {"static": [u for u, _, _ in urls]}}],
            "picking": {"prefix": {"mode": "precise"}},
            "timeouts": {"firstByteS": 300, "idleS": 300, "totalS": 600},
        }
        (workdir / "router.json").write_text(json.dumps(config))
        log = workdir / "router.log"
        with log.open("ab") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "shoal.router", "--config", str(workdir / "router.json")],
                stdout=out, stderr=subprocess.STDOUT, env=env))
        router = f"http://127.0.0.1:{port}"
        wait_healthy(router, procs[-1], log, READY_TIMEOUT_S)
        yield router, [u for u, _, _ in urls]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _client(url: str, policy: str, params: RealParams, counter: Iterator[int], start: float,
                  stats: RealStats, harness: RealHarness | None) -> None:
    end = start + params.duration_s
    system = system_prompt(params)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        while time.monotonic() < end:
            index = next(counter)
            prog = program(params, index)
            program_id = f"bench-{params.seed}-{index}"
            messages: list[dict[str, Any]] = [{"role": "system", "content": system},
                                              {"role": "user", "content": prog.task}]
            begun = time.monotonic()
            for turn in range(prog.turns):
                body: dict[str, Any] = {"model": SERVED, "messages": messages, "max_tokens": prog.output_tokens[turn],
                                        "temperature": 0, "ignore_eos": True}
                if policy == "shoal":
                    body["program_id"] = program_id
                if harness is not None:
                    try:
                        data = await harness.call(index, turn, body)
                    except httpx.HTTPError:
                        stats.errors += 1
                        break
                else:
                    resp = await http.post("/v1/chat/completions", json=body)
                    if resp.status_code != 200:
                        stats.errors += 1
                        break
                    data = resp.json()
                now = time.monotonic()
                if start + params.warmup_s <= now <= end:
                    usage = data["usage"]
                    stats.steps += 1
                    stats.prompt_tokens += usage["prompt_tokens"]
                    stats.cached_tokens += (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                messages.append({"role": "assistant", "content": data["choices"][0]["message"]["content"] or ""})
                if turn < prog.turns - 1:
                    if time.monotonic() >= end:
                        break
                    await asyncio.sleep(prog.tool_s[turn])
                    messages.append({"role": "user", "content": prog.observations[turn]})
            else:
                if begun >= start + params.warmup_s and time.monotonic() <= end:
                    stats.completions.append(time.monotonic() - begun)
            if policy == "shoal":
                await http.post(f"/v1/programs/{program_id}/release")
            elif harness is not None:
                harness.release(index)


PAUSE_HISTOGRAM = "shoal_router_program_pause_seconds_bucket"


def router_pauses(metrics: str) -> list[float]:
    """Every pause the router's histogram holds, each as its bucket's upper bound (seconds)."""
    buckets: dict[float, float] = {}
    for line in metrics.splitlines():
        if line.startswith(PAUSE_HISTOGRAM + "{"):
            labels, value = line.rsplit(" ", 1)
            bound = labels.split('le="', 1)[1].split('"', 1)[0]
            le = float("inf") if bound == "+Inf" else float(bound)
            buckets[le] = buckets.get(le, 0.0) + float(value)
    out: list[float] = []
    below = 0.0
    for le in sorted(buckets):
        out += [le] * round(buckets[le] - below)
        below = buckets[le]
    return out


def run_policy(policy: str, params: RealParams) -> RealStats:
    """Fresh engines and router, C clients for ``duration_s``; returns the window's figures."""
    if policy not in POLICIES:
        raise ValueError(f"unknown real-engine policy {policy!r}; choose from {', '.join(POLICIES)}")
    stats = RealStats(policy)
    with tempfile.TemporaryDirectory(prefix="shoal-programs-real-") as tmp, servers(params, Path(tmp)) as (url, engines):

        async def main() -> None:
            counter = itertools.count()
            harness = None
            if policy == "TA as coded":
                harness = RealHarness(ThunderAgent(intended=False), engines, EngineSpec(num_blocks=params.kv_blocks), 0)
            timer = asyncio.create_task(harness.run_timer()) if harness else None
            start = time.monotonic()
            try:
                await asyncio.gather(*(_client(url, policy, params, counter, start, stats, harness)
                                       for _ in range(params.concurrency)))
            finally:
                if timer is not None:
                    timer.cancel()
                if harness is not None:
                    stats.pauses = list(harness.pauses)
                    await harness.close()
            if policy == "shoal":
                async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                    stats.pauses = router_pauses((await http.get("/metrics")).text)
                stats.pauses_bucketed = True

        asyncio.run(main())
        stats.load_avg = os.getloadavg()[0]
    stats.window_s = params.duration_s - params.warmup_s
    return stats
