"""Scale from zero, locally: time to first token when the pool has no engine, beside the warm TTFT.

Runs ``shoal up`` on the bundled model (SmolLM2-135M Q4_1) with a ModelPool at
``autoscaling.minReplicas: 0`` behind a Router. Each round waits until the engine process has
been stopped for idleness, then sends one streamed chat request (the router holds it; the
``shoal up`` supervisor starts the engine) and times its first content token; then a few warm
requests on the running engine. Writes a Markdown report.

    .venv/bin/python bench/cold_start.py [--rounds 3] [--warm 5] [--out bench/results/cold-start.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from shoal.operator.local_runtime import RunState, free_ports

REPO = Path(__file__).resolve().parents[1]
IDLE_S = 10
PROMPT = "What is the capital of France? Answer in one short sentence."


def manifests(folder: Path) -> Path:
    pool = {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelPool", "metadata": {"name": "smol"},
            "spec": {"model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "smol"},
                     "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "scaleToZeroAfterSeconds": IDLE_S}}}
    router = {"apiVersion": "shoal.dev/v1alpha1", "kind": "Router", "metadata": {"name": "front"},
              "spec": {"pools": [{"name": "smol"}]}}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stack.yaml").write_text(yaml.safe_dump_all([pool, router]))
    return folder


def ttft(client: httpx.Client, url: str) -> float:
    """Seconds from sending a streamed chat request to its first non-empty content delta."""
    body = {"model": "smol", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16,
            "temperature": 0, "stream": True}  # fmt: skip
    started = time.perf_counter()
    first: float | None = None
    with client.stream("POST", f"{url}/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if first is None and line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0].get("delta", {})
                if delta.get("content"):
                    first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the answer had no content")
    return first


def engines(state_dir: Path) -> list[dict[str, Any]]:
    state = RunState.read(state_dir)
    return [p for p in (state.processes if state else []) if p["name"].startswith("engine/")]


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def watch_engine(state_dir: Path, started: float, out: dict[str, float]) -> None:
    """Record when the engine process appears in ``shoal up``'s state and when its /health passes."""
    with httpx.Client(timeout=1, trust_env=False) as client:
        while "healthy" not in out and time.perf_counter() - started < 600:
            procs = engines(state_dir)
            if procs and "spawned" not in out:
                out["spawned"] = time.perf_counter() - started
            if procs:
                try:
                    if client.get(procs[0]["url"] + "/health").status_code == 200:
                        out["healthy"] = time.perf_counter() - started
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)


def run(rounds: int, warm: int, tmp: Path) -> tuple[list[float], list[float], list[dict[str, float]]]:
    state_dir, out = tmp / "state", tmp / "up.out"
    ports = free_ports()
    port = next(ports)
    ports.close()
    with open(out, "wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "shoal.operator", "up", "-f", str(manifests(tmp / "m")), "--state-dir",
             str(state_dir), "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    cold: list[float] = []
    warm_s: list[float] = []
    phases: list[dict[str, float]] = []
    try:
        wait(lambda: "ready:" in out.read_text() or up.poll() is not None, 120, "shoal up")
        assert up.poll() is None, out.read_text()
        url = f"http://127.0.0.1:{port}/v1"
        with httpx.Client(timeout=600, trust_env=False) as client:
            for i in range(rounds):
                wait(lambda: not engines(state_dir), IDLE_S + 60, "the engine to stop for idleness")
                phase: dict[str, float] = {}
                watcher = threading.Thread(target=watch_engine, args=(state_dir, time.perf_counter(), phase))
                watcher.start()
                cold.append(ttft(client, url))
                watcher.join(5)
                phases.append(phase)
                warm_s += [ttft(client, url) for _ in range(warm)]
                print(f"round {i + 1}: cold TTFT {cold[-1]:.2f} s {phase}, warm p50 "
                      f"{statistics.median(warm_s[-warm:]) * 1000:.0f} ms", flush=True)  # fmt: skip
    finally:
        up.terminate()
        up.wait(60)
    return cold, warm_s, phases


def report(
    cold: list[float], warm: list[float], phases: list[dict[str, float]], rounds: int, warm_n: int, command: str
) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    spawned = statistics.median(p.get("spawned", float("nan")) for p in phases)
    healthy = statistics.median(p.get("healthy", float("nan")) for p in phases)
    return "\n".join([
        "# Scale from zero: time to first token, locally (`shoal up`)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other work), load average at the "
        f"end {load}; Python {platform.python_version()}, Linux {platform.release()}.",
        "",
        "Setup: `shoal up` on a ModelPool `bundled:smollm2-135m-instruct` (SmolLM2-135M Q4_1, CPU) with "
        f"`autoscaling: {{minReplicas: 0, maxReplicas: 1, scaleToZeroAfterSeconds: {IDLE_S}}}` behind a "
        "Router. Each round waits until the supervisor has stopped the engine for idleness, then sends one "
        "streamed chat request (16 tokens, temperature 0): the router holds it, the supervisor sees it on "
        "the router's `/shoal/demand` (polled every 0.25 s) and starts the engine process, the router "
        "releases the request when the engine's `/health` passes. TTFT is measured by the client, from "
        f"sending to the first content token. Then {warm_n} warm requests, one at a time, on the running "
        "engine.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| cold starts | {len(cold)} of {rounds} |",
        f"| TTFT from zero, p50 | {statistics.median(cold):.2f} s |",
        f"| TTFT from zero, each | {', '.join(f'{c:.2f} s' for c in cold)} |",
        f"| warm TTFT, p50 ({len(warm)} requests) | {statistics.median(warm) * 1000:.0f} ms |",
        f"| warm TTFT, max | {max(warm) * 1000:.0f} ms |",
        "",
        "Where a cold start's time goes (p50 over the rounds, from sending the request; watched from the "
        "bench every 50 ms, so each figure is late by up to that):",
        "",
        "| phase | p50 |",
        "|---|---|",
        f"| request held -> engine process started by the supervisor | {spawned:.2f} s |",
        f"| engine process started -> its /health passes (imports, model load, KV cache) | {healthy - spawned:.2f} s |",
        f"| /health passes -> first token at the client (router readmission, prefill) | "
        f"{statistics.median(cold) - healthy:.2f} s |",
        "",
        "In a cluster the operator's poll (SHOAL_SCALE_FROM_ZERO_INTERVAL, default 2 s), the pod's "
        "scheduling and the image pull come on top; they are not measured here.",
        "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="cold starts")
    parser.add_argument("--warm", type=int, default=5, help="warm requests after each cold start")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cold-start.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-cold-start-") as tmp:
        cold, warm, phases = run(args.rounds, args.warm, Path(tmp))
    command = "python bench/cold_start.py" + (f" --rounds {args.rounds}" if args.rounds != 3 else "") + (
        f" --warm {args.warm}" if args.warm != 5 else "")  # fmt: skip
    text = report(cold, warm, phases, args.rounds, args.warm, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
