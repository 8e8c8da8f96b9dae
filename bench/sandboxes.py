"""Sandbox benchmark: start time cold vs warm pool, preparation hidden by pre-warm, leaks.

Real local sandboxes (network namespace, per-sandbox uid, rlimits; needs root for the full
isolation). "Environment preparation" is the class's ``sandbox.command``: here it writes
``--files`` files into the sandbox and sleeps ``--prepare-s`` (a stand-in for a dependency
install or a repository checkout). Writes ``bench/results/sandboxes.md``.

1. start: the first tool call's wait for its sandbox, programs one after another, with no
   warm pool (cold) and with ``warmPoolSize`` sandboxes kept ready (warm).
2. queued: programs wait in a FIFO queue for one of ``--slots`` admission slots (what the
   program scheduler does); each runs ``--calls`` tool calls with ``--think-s`` of model
   time between them, then is released. With pre-warm, a program's sandbox starts preparing
   when it is among the next ``--lookahead`` in the queue. Hidden share = 1 - (time first
   calls waited for their sandboxes) / (time the preparations took).
3. leaks: what is left afterwards (sandbox records/dirs, uid claims, processes, ports).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.local import LocalBackend
from shoal.router.sandboxes.local_process import listening_ports
from shoal.router.sandboxes.manager import SandboxManager
from shoal.router.sandboxes.settings import SandboxSettings

RESULTS = Path(__file__).resolve().parent / "results" / "sandboxes.md"


def program_class(args: argparse.Namespace, warm: int = 0) -> ProgramClassConfig:
    prepare = f"i=0; while [ $i -lt {args.files} ]; do echo $i > f$i; i=$((i+1)); done; sleep {args.prepare_s}"
    return ProgramClassConfig.model_validate({
        "name": "bench", "model": "m",
        "sandbox": {"command": ["sh", "-c", prepare], "network": "none", "warmPoolSize": warm, "ttlSeconds": 600},
        "tools": [{"name": "run", "command": ["sh", "-c", "cat > args.json; ls | wc -l"]}],
    })  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def first_call_wait(m: SandboxManager, pid: str, cls: ProgramClassConfig) -> float:
    await m.run_tool(pid, cls, "run", b'{"step": 0}')
    ledger = await m.ledger(pid)
    assert ledger is not None and isinstance(ledger["first_call_wait_s"], float)
    return ledger["first_call_wait_s"]


async def start_times(settings: SandboxSettings, args: argparse.Namespace, warm: int) -> list[float]:
    m = SandboxManager(LocalBackend(settings), settings)
    cls = program_class(args, warm)
    m.set_classes([cls])
    waits = []
    for i in range(args.samples):
        while warm and m.states()["warm"] < warm:  # programs arrive slower than the pool refills
            await asyncio.sleep(0.01)
        waits.append(await first_call_wait(m, f"start-{warm}-{i}", cls))
        await m.release(f"start-{warm}-{i}")
    await m.stop()
    return waits


async def queued(settings: SandboxSettings, args: argparse.Namespace, prewarm: bool) -> dict[str, float]:
    m = SandboxManager(LocalBackend(settings), settings)
    cls = program_class(args)
    queue = [f"q-{int(prewarm)}-{i}" for i in range(args.programs)]
    slots = asyncio.Semaphore(args.slots)
    waits: dict[str, float] = {}
    prepared: dict[str, float] = {}
    began = time.monotonic()

    async def program(pid: str) -> None:
        async with slots:
            queue.remove(pid)
            if prewarm:
                for nxt in queue[: args.lookahead]:
                    await m.prewarm(nxt, cls)
            waits[pid] = await first_call_wait(m, pid, cls)
            ledger = await m.ledger(pid)
            assert ledger is not None and isinstance(ledger["prepare_s"], float)
            prepared[pid] = ledger["prepare_s"]
            for step in range(1, args.calls):
                await asyncio.sleep(args.think_s)
                await m.run_tool(pid, cls, "run", f'{{"step": {step}}}'.encode())
            await m.release(pid)

    if prewarm:
        for pid in queue[: args.lookahead]:
            await m.prewarm(pid, cls)
    await asyncio.gather(*(program(pid) for pid in list(queue)))
    wall = time.monotonic() - began
    await m.stop()
    queued_ids = [f"q-{int(prewarm)}-{i}" for i in range(args.slots, args.programs)]  # admitted after a wait

    def hidden(ids: list[str]) -> float:
        return 1 - sum(waits[p] for p in ids) / sum(prepared[p] for p in ids)

    queued_waits = [waits[p] for p in queued_ids]
    return {"hidden_all": hidden(list(waits)), "hidden": hidden(queued_ids), "wait_p50": pct(queued_waits, 0.5),
            "wait_p99": pct(queued_waits, 0.99), "prep_mean": sum(prepared.values()) / len(prepared), "wall": wall}  # fmt: skip


def leftovers(settings: SandboxSettings) -> dict[str, int]:
    backend = LocalBackend(settings)
    uids = range(settings.uid_base, settings.uid_base + settings.uid_count)
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        if status["State"].split()[0] != "Z" and int(status["Uid"].split()[0]) in uids:
            pids.append(int(pid))
    return {"sandboxes": len(backend.list_existing()), "directories": len(list(backend.dir.iterdir())),
            "uid_claims": len(list(backend.uid_dir.iterdir())), "processes": len(pids),
            "ports": listening_ports(pids)}  # fmt: skip


async def main_async(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="shoal-bench-sandboxes-") as state:
        settings = SandboxSettings(state_dir=state, router_id="bench", max_concurrent_preparations=args.max_prep,
                                   uid_base=1_500_000)  # fmt: skip
        cold = await start_times(settings, args, warm=0)
        warm = await start_times(settings, args, warm=args.warm)
        without = await queued(settings, args, prewarm=False)
        with_prewarm = await queued(settings, args, prewarm=True)
        left = leftovers(settings)
    command = "python bench/sandboxes.py " + " ".join(sys.argv[1:])
    ok = "yes" if with_prewarm["hidden"] >= 0.8 else "NO"
    return "\n".join([
        "# Tool sandboxes (local backend)",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"{'root (full isolation)' if os.geteuid() == 0 else 'not root (reduced isolation)'}",
        f"- command: `{command.strip()}`",
        f"- sandbox: `network: none`, own uid, rlimits; preparation = write {args.files} files + "
        f"sleep {args.prepare_s} s (stand-in for a dependency install); tool = `sh -c 'cat > args.json; ls | wc -l'`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        f"## 1. Sandbox start (first tool call's wait), {args.samples} programs one after another",
        "",
        "| pool | p50 ms | p99 ms |",
        "|---|---:|---:|",
        f"| cold (no pool) | {pct(cold, 0.5) * 1000:.1f} | {pct(cold, 0.99) * 1000:.1f} |",
        f"| warm (warmPoolSize {args.warm}) | {pct(warm, 0.5) * 1000:.1f} | {pct(warm, 0.99) * 1000:.1f} |",
        "",
        f"## 2. Queued workload: {args.programs} programs, {args.slots} admission slots, {args.calls} tool calls "
        f"each, {args.think_s} s model time between calls, pre-warm lookahead {args.lookahead}, "
        f"maxConcurrentPreparations {args.max_prep}",
        "",
        "| pre-warm | preparation hidden (queued programs) | (all programs) | first-call wait p50 ms (queued) "
        "| p99 ms | mean preparation s | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(f"| {name} | {r['hidden'] * 100:.1f}% | {r['hidden_all'] * 100:.1f}% | {r['wait_p50'] * 1000:.1f} | "
          f"{r['wait_p99'] * 1000:.1f} | {r['prep_mean']:.2f} | {r['wall']:.1f} |"
          for name, r in (("off", without), ("on", with_prewarm))),
        "",
        f"Target: >= 80% of preparation hidden with pre-warm: **{ok}** ({with_prewarm['hidden'] * 100:.1f}% for the "
        f"{args.programs - args.slots} programs that waited in the queue). The first {args.slots} programs are "
        "admitted the moment they arrive, so nothing can be hidden for them (a warm pool is what serves those: "
        "table 1); they are in the 'all programs' column.",
        "",
        "## 3. Leaks after all runs (target 0)",
        "",
        "| " + " | ".join(left) + " |",
        "|" + "---:|" * len(left),
        "| " + " | ".join(str(v) for v in left.values()) + " |",
        "",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20, help="programs per start-time row")
    parser.add_argument("--warm", type=int, default=2, help="warmPoolSize of the warm row")
    parser.add_argument("--files", type=int, default=200, help="files the preparation writes")
    parser.add_argument("--prepare-s", type=float, default=0.3, help="preparation sleep (seconds)")
    parser.add_argument("--programs", type=int, default=24)
    parser.add_argument("--slots", type=int, default=4, help="programs admitted at once")
    parser.add_argument("--calls", type=int, default=3, help="tool calls per program")
    parser.add_argument("--think-s", type=float, default=0.4, help="model time between tool calls")
    parser.add_argument("--lookahead", type=int, default=4, help="pre-warm the next k queued programs")
    parser.add_argument("--max-prep", type=int, default=4, help="maxConcurrentPreparations")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    print(report)
    if not args.no_write:
        RESULTS.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
