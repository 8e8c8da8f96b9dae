"""The markdown report and the latency-vs-rate plots of a serving benchmark."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from loadgen.stats import RunSummary

T = TypeVar("T", bound=tuple[Any, ...])


@dataclass(frozen=True)
class Overhead:
    """Offline ``LLM.generate`` vs HTTP at saturation on the same workload, over alternating rounds."""

    offline: list[tuple[float, int, float]]
    """Per round: (wall s, engine steps, seconds in step())."""
    output_tokens: int
    http: dict[str, list[tuple[float, int, float, float]]]
    """mode -> per round: (wall s, engine steps, engine busy s, bench client CPU s)."""

    def offline_round(self, best: bool) -> tuple[float, int, float]:
        return _pick(self.offline, best)

    def http_round(self, mode: str, best: bool) -> tuple[float, int, float, float]:
        return _pick(self.http[mode], best)

    def ratio(self, mode: str, best: bool) -> float:
        """HTTP throughput as a fraction of offline (best or median rounds)."""
        return self.offline_round(best)[0] / self.http_round(mode, best)[0]


def _pick(rounds: list[T], best: bool) -> T:
    """The fastest round (other processes on a shared machine only ever add time) or the median one."""
    ordered = sorted(rounds, key=lambda r: r[0])  # type: ignore[index]
    return ordered[0] if best else ordered[len(ordered) // 2]


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{platform.node()}: {cpu or platform.processor()}, {os.cpu_count()} cores, Python {platform.python_version()}, load average at start {load}"


def _ms(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v * 1000:.0f}" for v in values)


def summary_table(rows: Sequence[RunSummary]) -> str:
    lines = [
        "| run | offered req/s | ok / sent | 429 | req/s | out tok/s | goodput req/s | TTFT p50/p90/p99 ms "
        "| TPOT p50/p90/p99 ms | ITL p50/p90/p99 ms | E2E p50/p90/p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = "inf" if r.offered_rate == float("inf") else f"{r.offered_rate:.2f}"
        lines.append(
            f"| {r.label} | {rate} | {r.num_ok} / {r.num_requests} | {r.num_rejected} | {r.request_throughput:.2f} "
            f"| {r.output_throughput:.1f} | {r.goodput:.2f} | {_ms(r.ttft)} | {_ms(r.tpot)} | {_ms(r.itl)} | {_ms(r.e2e)} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[RunSummary], out_dir: Path, stem: str) -> list[Path]:
    """latency-vs-rate and throughput-vs-rate PNGs; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(rows, key=lambda r: r.request_throughput)
    x = [r.request_throughput for r in points]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, name, attr in zip(axes, ("TTFT", "TPOT", "ITL"), ("ttft", "tpot", "itl"), strict=True):
        for idx, q in ((0, "p50"), (2, "p99")):
            ax.plot(x, [getattr(r, attr)[idx] * 1000 for r in points], marker="o", label=q)
        ax.set_xlabel("achieved request rate (req/s)")
        ax.set_ylabel(f"{name} (ms)")
        ax.set_title(f"{name} vs request rate")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    latency = out_dir / f"{stem}-latency.png"
    fig.savefig(latency, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r.output_throughput for r in points], marker="o", label="output tok/s")
    ax2 = ax.twinx()
    ax2.plot(x, [r.goodput for r in points], marker="s", color="tab:green", label="goodput (req/s)")
    ax.set_xlabel("achieved request rate (req/s)")
    ax.set_ylabel("output tokens/s")
    ax2.set_ylabel("goodput (req/s)")
    ax.set_title("throughput and goodput vs request rate")
    ax.grid(alpha=0.3)
    fig.legend(loc="upper left")
    fig.tight_layout()
    throughput = out_dir / f"{stem}-throughput.png"
    fig.savefig(throughput, dpi=110)
    plt.close(fig)
    return [latency, throughput]


def overhead_section(o: Overhead) -> str:
    lines = [
        "| path | round | wall s | output tok/s | % of offline | engine steps | engine busy s | mean step ms "
        "| engine idle s | bench client CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for best in (True, False):
        label = "best" if best else "median"
        wall, steps, busy = o.offline_round(best)
        lines.append(
            f"| offline `LLM.generate` | {label} | {wall:.2f} | {o.output_tokens / wall:.1f} | 100% | {steps} "
            f"| {busy:.2f} | {busy / max(steps, 1) * 1000:.1f} | {wall - busy:.2f} | - |"
        )
        for mode in o.http:
            wall, steps, busy, cpu = o.http_round(mode, best)
            lines.append(
                f"| HTTP ({mode}) | {label} | {wall:.2f} | {o.output_tokens / wall:.1f} "
                f"| {o.ratio(mode, best) * 100:.1f}% | {steps} | {busy:.2f} | {busy / max(steps, 1) * 1000:.1f} "
                f"| {wall - busy:.2f} | {cpu:.2f} |"
            )
    walls = {"offline": [r[0] for r in o.offline], **{m: [r[0] for r in rs] for m, rs in o.http.items()}}
    listed = "; ".join(f"{name}: " + ", ".join(f"{w:.2f}" for w in ws) for name, ws in walls.items())
    lines += ["", f"Wall seconds of every round, in order: {listed}."]
    return "\n".join(lines)


def attribution(o: Overhead, mode: str) -> str:
    wall, steps, busy, client_cpu = o.http_round(mode, best=True)
    off_wall, off_steps, off_busy = o.offline_round(best=True)
    idle = (wall - busy) - (off_wall - off_busy)
    slower = busy - off_busy
    return (
        f"HTTP ({mode}), best rounds: {wall - off_wall:+.2f} s vs offline ({o.ratio(mode, True) * 100:.1f}% of "
        f"offline throughput). Engine idle time (its thread outside `step()`: requests still arriving over HTTP at "
        f"the start, inbox work such as `add_request`, stats snapshots, the tail) accounts for {idle:+.2f} s; "
        f"time inside `step()` for {slower:+.2f} s ({steps} steps at {busy / max(steps, 1) * 1000:.1f} ms vs "
        f"{off_steps} at {off_busy / max(off_steps, 1) * 1000:.1f} ms offline): there the event loop (HTTP, JSON, "
        f"SSE) and the benchmark client ({client_cpu:.2f} s of CPU) compete with the model for the GIL and the cores."
    )
