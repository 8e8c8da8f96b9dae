"""How much latency and CPU the router adds, against going straight to the upstream.

Starts ``bench/fake_upstream.py`` (pre-made tokens at a fixed rate) and the router
(``python -m shoal.router``, uvloop + httptools when installed) as their own processes,
then drives both with the same raw-asyncio streaming client at 1, 64 and 512 concurrent
streams, and finally holds N streams open at once through the router.

    .venv/bin/python bench/router_overhead.py            # writes bench/results/router-overhead.md
    .venv/bin/python bench/router_overhead.py --quick    # a smaller smoke run

Everything runs on 127.0.0.1 and stops by itself (bounded request counts and timeouts).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "router-overhead.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stream:
    ok: bool
    ttft_s: float = 0.0
    gaps_s: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str = ""


def request_bytes(port: int, tokens: int, interval_ms: float | None = None) -> bytes:
    extra = {} if interval_ms is None else {"bench_interval_ms": interval_ms}
    body = json.dumps(
        {"model": "fake", "stream": True, "max_tokens": tokens, **extra,
         "messages": [{"role": "system", "content": "You are a benchmark."},
                      {"role": "user", "content": "Say something " * 8}]}
    ).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def one_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> Stream:
    """Send one request on a kept-alive connection; time every SSE token event."""
    clock = time.perf_counter
    t0 = clock()
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    if status != 200 or b"chunked" not in head.lower():
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line[15:])
        body = await reader.readexactly(length) if length else b""
        return Stream(False, error=f"status {status}: {body[:200]!r}")
    times: list[float] = []
    done = errored = False
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            break
        data = await reader.readexactly(size + 2)
        now = clock()
        times.extend([now] * data.count(b'data: {"id"'))
        done = done or b"[DONE]" in data
        errored = errored or b'"error"' in data
    if not times or not done or errored:
        return Stream(False, error="incomplete stream" if not errored else "error event")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return Stream(True, times[0] - t0, gaps, len(times))


OPEN = [0, 0]
"""Streams open now, and the most open at once."""


async def worker(port: int, payload: bytes, count: int, out: list[Stream], start_jitter_s: float) -> None:
    await asyncio.sleep(random.random() * start_jitter_s)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    try:
        for _ in range(count):
            OPEN[0] += 1
            OPEN[1] = max(OPEN[1], OPEN[0])
            try:
                out.append(await asyncio.wait_for(one_stream(reader, writer, payload), 60))
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                out.append(Stream(False, error=type(exc).__name__))
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
            finally:
                OPEN[0] -= 1
    finally:
        writer.close()


async def run_level(port: int, concurrency: int, per_worker: int, tokens: int, jitter_s: float) -> list[Stream]:
    out: list[Stream] = []
    payload = request_bytes(port, tokens)
    await asyncio.gather(*(worker(port, payload, per_worker, out, jitter_s) for _ in range(concurrency)))
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def wait_http(port: int, path: str, timeout_s: float = 30) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"port {port}{path} not ready")


def write_tokenizer_payload(path: Path) -> None:
    """The bundled SmolLM2's tokenizer and chat template as an engine's ``/shoal/tokenizer`` serves them."""
    from shoal.engine.bundled import bundled_model_path
    from shoal.engine.loader.gguf_loader import open_gguf, read_metadata
    from shoal.engine.tokenizer import Tokenizer

    meta = {k: v for k, v in read_metadata(open_gguf(bundled_model_path())).items() if k.startswith("tokenizer.")}
    path.write_text(json.dumps({**Tokenizer.from_gguf_metadata(meta).to_payload(), "block_size": 16}))


def start_processes(args: argparse.Namespace, workdir: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int, int]:
    up_port, router_port = free_port(), free_port()
    tokenizer = workdir / "tokenizer.json"
    write_tokenizer_payload(tokenizer)
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fake_upstream.py"), "--port", str(up_port),
         "--ttft-ms", str(args.ttft_ms), "--interval-ms", str(args.interval_ms), "--tokenizer", str(tokenizer)],
    )
    # The default configuration: the pool's tokenizer comes from the engine (GET /shoal/tokenizer),
    # so every request is templated and tokenized for prefix affinity.
    cfg = {
        "pools": [{"name": "bench", "models": ["fake"], "endpoints": {"static": [f"http://127.0.0.1:{up_port}"]}}],
        "limits": {"maxConnections": 8192, "maxKeepaliveConnections": 4096},
        "logLevel": "warning",
    }
    cfg_path = workdir / "router.yaml"
    cfg_path.write_text(json.dumps(cfg))
    router = subprocess.Popen(
        [sys.executable, "-m", "shoal.router", "--config", str(cfg_path), "--host", "127.0.0.1", "--port", str(router_port)],
    )
    if args.pin and (os.cpu_count() or 1) >= 2:
        # the router gets the last core to itself; the upstream and the load generator share the rest,
        # so the router's tail latency is not the OS scheduler juggling three processes on 2 cores
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(router.pid, {cores[-1]})
        os.sched_setaffinity(upstream.pid, set(cores[:-1]))
        os.sched_setaffinity(0, set(cores[:-1]))
    wait_http(up_port, "/health")
    wait_http(router_port, "/health")
    time.sleep(5)  # the router fetches the tokenizer at its first poll and builds it in a thread
    return upstream, router, up_port, router_port


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def hold_streams(port: int, n: int, tokens: int, interval_ms: float, ramp_s: float) -> tuple[int, int, int, float]:
    """Open ``n`` streams longer than the ramp, so all are open at once; returns (ok, failed, peak open, seconds)."""
    out: list[Stream] = []
    payload = request_bytes(port, tokens, interval_ms)
    OPEN[:] = [0, 0]
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(port, payload, 1, out, ramp_s) for _ in range(n)))
    ok = sum(1 for s in out if s.ok)
    return ok, len(out) - ok, OPEN[1], time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description="router-added latency vs direct")
    parser.add_argument("--levels", default="1,64,512")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default: per level)")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--hold", default="1000,2000", help="concurrent-stream counts to hold open through the router")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not give the router its own core (default: pinned when >= 2 cores)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.quick:
        args.levels, args.hold = "1,16", "100"
        if args.out == str(RESULTS):
            args.out = str(RESULTS.with_name("router-overhead-quick.md"))
    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop " + uvloop.__version__
    except ImportError:
        loop_name = "asyncio"
    levels = [int(x) for x in args.levels.split(",") if x]
    holds = [int(x) for x in args.hold.split(",") if x]
    workdir = Path(tempfile.mkdtemp(prefix="router-bench-"))
    upstream, router, up_port, router_port = start_processes(args, workdir)
    router_ps = psutil.Process(router.pid)
    rows: list[dict[str, float | str]] = []
    hold_rows: list[tuple[int, int, int, int, float]] = []
    load_before = os.getloadavg()
    try:
        asyncio.run(run_level(router_port, 4, 5, args.tokens, 0.0))  # warm-up: connections, code paths
        # Steady rows: each worker starts at a random point of one stream's duration, so `level` streams
        # are open at any time. The burst row starts all 64 within one token interval (64 simultaneous
        # arrivals every stream), which measures queueing of request handling in the router instead.
        stream_s = (args.ttft_ms + args.tokens * args.interval_ms) / 1000
        plan = [(level, "steady", stream_s) for level in levels]
        if 64 in levels:
            plan.append((64, "burst", args.interval_ms / 1000))
        for level, mode, jitter in plan:
            total = args.requests or {1: 40, 64: 1280}.get(level, max(level * 3, 200))
            per_worker = max(1, total // level)
            direct = asyncio.run(run_level(up_port, level, per_worker, args.tokens, jitter))
            cpu0 = cpu_seconds(router_ps)
            via = asyncio.run(run_level(router_port, level, per_worker, args.tokens, jitter))
            cpu = cpu_seconds(router_ps) - cpu0
            d_ok, r_ok = [s for s in direct if s.ok], [s for s in via if s.ok]
            d_ttft, r_ttft = [s.ttft_s for s in d_ok], [s.ttft_s for s in r_ok]
            d_gap = statistics.fmean(g for s in d_ok for g in s.gaps_s) if d_ok else float("nan")
            r_gap = statistics.fmean(g for s in r_ok for g in s.gaps_s) if r_ok else float("nan")
            row: dict[str, float | str] = {
                "streams": level, "mode": mode, "requests": len(via),
                "errors": len(via) - len(r_ok) + len(direct) - len(d_ok),
                "direct_p50": pct(d_ttft, 50), "direct_p99": pct(d_ttft, 99),
                "router_p50": pct(r_ttft, 50), "router_p99": pct(r_ttft, 99),
                "gap_added_us": (r_gap - d_gap) * 1e6, "cpu_ms_per_req": cpu / max(1, len(via)) * 1000,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        for n in holds:
            ok, failed, peak, took = asyncio.run(hold_streams(router_port, n, 25, interval_ms=250, ramp_s=1.0))
            hold_rows.append((n, ok, failed, peak, took))
            print(json.dumps({"hold": n, "ok": ok, "failed": failed, "peak_open": peak, "seconds": round(took, 1)}),
                  flush=True)
            if failed:
                break
    finally:
        for proc in (router, upstream):
            proc.terminate()
        for proc in (router, upstream):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    write_report(Path(args.out), args, rows, hold_rows, loop_name, load_before)
    return 0


def write_report(path: Path, args: argparse.Namespace, rows: list[dict[str, float | str]],
                 holds: list[tuple[int, int, int, int, float]], loop_name: str, load: tuple[float, float, float]) -> None:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ms = 1000.0
    lines = [
        "# Router overhead",
        "",
        f"- Machine: {cpu}, {os.cpu_count()} cores (shared with other users), Python {platform.python_version()}, "
        f"{loop_name}; load average at start {load[0]:.2f}",
        f"- Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- Upstream: `bench/fake_upstream.py`, first token after {args.ttft_ms:g} ms, then one token every "
        f"{args.interval_ms:g} ms, {args.tokens} tokens per stream; router, upstream and load generator are "
        "separate processes on 127.0.0.1"
        + ("; the router is pinned to its own core, upstream and load generator share the other." if args.pin else "."),
        "- Router config: the default (one static pool): the tokenizer source is the engine (the upstream serves "
        "the bundled SmolLM2 tokenizer and chat template at `/shoal/tokenizer`), so every request is templated and "
        "tokenized for prefix affinity; default picking (prefix-affinity, queue-depth, kv-usage, session-affinity); "
        "tenancy headers (per-tenant cache salt), metrics on, no auth.",
        "- Added TTFT = router percentile minus direct percentile (same client, same load). "
        "Per-token overhead = mean inter-token gap through the router minus direct.",
        "",
        "- Arrivals: *steady* rows start each client stream at a random point of one stream's duration, so N "
        "streams are open at any time; the *burst* row starts all 64 within one token interval, so 64 requests "
        "reach the router at the same moment every stream (request handling then queues in the router's one "
        "event loop).",
        "",
        "| streams | arrivals | requests | errors | direct TTFT p50 / p99 (ms) | router TTFT p50 / p99 (ms) | "
        "added p50 (ms) | added p99 (ms) | per-token added (µs) | router CPU / request (ms) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        dp50, dp99, rp50, rp99 = (float(r[k]) for k in ("direct_p50", "direct_p99", "router_p50", "router_p99"))
        lines.append(
            f"| {r['streams']} | {r['mode']} | {r['requests']} | {r['errors']} | {dp50 * ms:.2f} / {dp99 * ms:.2f} | "
            f"{rp50 * ms:.2f} / {rp99 * ms:.2f} | {(rp50 - dp50) * ms:.2f} | {(rp99 - dp99) * ms:.2f} | "
            f"{float(r['gap_added_us']):.0f} | {float(r['cpu_ms_per_req']):.2f} |"
        )
    lines += ["", "## Concurrent open streams through the router", "",
              "| streams opened | completed | failed | most open at once | wall time (s) |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {n} | {ok} | {failed} | {peak} | {took:.1f} |" for n, ok, failed, peak, took in holds]
    held = max((peak for _, _, failed, peak, _ in holds if not failed), default=0)
    lines += ["", f"Most concurrent streams held without an error: **{held}** (each stream is 25 tokens, one every "
              "250 ms, about 6 s long, all opened within 1 s, so they are all open together; the largest count "
              "tried, not a breaking point).", ""]
    lines += [
        "## Notes",
        "",
        "- The machine's 2 cores are shared by the load generator, the upstream, the router and other users' "
        "work (see the load average): the router is one more process that must be scheduled for every chunk, so "
        "the tail (p99) of the added latency mostly measures the OS scheduler on a busy machine and varies a lot "
        "from run to run; the medians are stable.",
        "- At 512 streams the upstream emits 25,600 chunks/s; the router (one Python process, one core at most) "
        "saturates, which shows as queueing (added TTFT and per-token gap grow). Router CPU per request falls as "
        "the fixed per-request work is shared out; at 1 stream it is dominated by background polling (`/health` "
        "and `/metrics` every 0.5 s) spread over few requests.",
        "- Each request is templated and tokenized (SmolLM2's chat template and tokenizer, about 0.3-0.5 ms for "
        "these prompts, on the event loop for bodies up to 2 KB, in a thread pool above): the burst row pays it "
        "64 times at one moment, which is most of its added p99.",
        "- The data path uses aiohttp's keep-alive pool (`router/upstream.py`); with httpx/httpcore on that "
        "path, router CPU per request at 64 streams was 10.7 ms (httpcore's pool scans every connection on "
        "each request).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
