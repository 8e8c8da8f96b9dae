"""Summaries of a run: latency percentiles, throughput and goodput under an SLO."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loadgen.client import RequestResult


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Slo:
    ttft_s: float
    tpot_s: float

    def met(self, r: RequestResult) -> bool:
        return r.ok and r.ttft <= self.ttft_s and r.tpot <= self.tpot_s


@dataclass(frozen=True)
class RunSummary:
    label: str
    offered_rate: float
    num_requests: int
    num_ok: int
    num_rejected: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    total_throughput: float
    goodput: float
    ttft: tuple[float, float, float]
    tpot: tuple[float, float, float]
    itl: tuple[float, float, float]
    e2e: tuple[float, float, float]
    cached_ratio: float


def _p3(values: Sequence[float]) -> tuple[float, float, float]:
    return (percentile(values, 50), percentile(values, 90), percentile(values, 99))


def summarize(label: str, offered_rate: float, results: Sequence[RequestResult], duration_s: float, slo: Slo) -> RunSummary:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    duration = max(duration_s, 1e-9)
    return RunSummary(
        label=label,
        offered_rate=offered_rate,
        num_requests=len(results),
        num_ok=len(ok),
        num_rejected=sum(r.status == 429 for r in results),
        duration_s=duration_s,
        request_throughput=len(ok) / duration,
        output_throughput=out_tokens / duration,
        total_throughput=(out_tokens + prompt_tokens) / duration,
        goodput=sum(slo.met(r) for r in ok) / duration,
        ttft=_p3([r.ttft for r in ok]),
        tpot=_p3([r.tpot for r in ok if r.output_tokens > 1]),
        itl=_p3([g for r in ok for g in r.chunk_gaps]),
        e2e=_p3([r.e2e for r in ok]),
        cached_ratio=sum(r.cached_tokens for r in ok) / max(prompt_tokens, 1),
    )
