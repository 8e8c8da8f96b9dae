"""Figures of one simulated run, and the issue's targets checked over a set of runs."""

from __future__ import annotations

from dataclasses import dataclass

from bench.sim_programs.fleet import RunStats

BASELINE = "prefix+load"
TA_CODED = "TA as coded"
TA_INTENDED = "TA as intended"
SHOAL = "shoal"
AGING_SLACK_S = 0.01
"""A wait may pass the aging bound by this much: the timer that admits it fires just after the bound."""


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@dataclass(frozen=True)
class Row:
    """One policy in one scenario."""

    scenario: str
    regime: str
    client_mode: str
    concurrency: int
    policy: str
    steps_per_min: float
    completion_p50: float
    completion_p99: float
    programs_finished: int
    hit_rate: float
    recomputed_tokens: int
    preemptions: int
    pauses: int
    pause_p50: float
    pause_p99: float
    longest_wait: float
    wait_p99: float
    """p99 over calls of the time the policy held a call before an engine got it."""
    rejected: int
    policy_counters: tuple[tuple[str, float], ...] = ()

    @staticmethod
    def of(scenario: str, regime: str, mode: str, concurrency: int, s: RunStats) -> Row:
        return Row(
            scenario, regime, mode, concurrency, s.policy, s.steps_per_min,
            pct(s.completions, 50), pct(s.completions, 99), s.programs_finished, s.hit_rate,
            s.recomputed_tokens, s.preemptions, len(s.pauses), pct(s.pauses, 50), pct(s.pauses, 99),
            max(s.queue_waits, default=0.0), pct(s.queue_waits, 99), s.rejected, tuple(s.policy_counters.items()),
        )


@dataclass(frozen=True)
class Check:
    """One target in one scenario."""

    scenario: str
    target: str
    value: float
    threshold: float
    met: bool
    note: str = ""


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def _speedup(by: dict[str, Row], policy: str, need: float, label: str) -> list[Check]:
    if policy not in by:
        return []
    shoal = by[SHOAL]
    value = ratio(shoal.steps_per_min, by[policy].steps_per_min)
    return [Check(shoal.scenario, f"{label} ({policy})", value, need, value >= need)]


def check_targets(rows: list[Row], max_wait_s: float) -> list[Check]:
    """The issue's simulator targets, per scenario at 2x oversubscription."""
    checks: list[Check] = []
    for scenario in dict.fromkeys(r.scenario for r in rows):
        by = {r.policy: r for r in rows if r.scenario == scenario}
        shoal = by.get(SHOAL)
        if shoal is None:
            continue
        regime, mode = shoal.regime, shoal.client_mode
        checks += _speedup(by, BASELINE, 1.5, "steps/min >= 1.5x no-admission prefix+load")
        if regime == "heavy-tail" or mode == "never-releases":
            checks += _speedup(by, TA_CODED, 1.2, "steps/min >= 1.2x")
            checks += _speedup(by, TA_INTENDED, 1.1, "steps/min >= 1.1x")
        worst = min((p for p in by if p != SHOAL), key=lambda p: ratio(shoal.steps_per_min, by[p].steps_per_min))
        checks += _speedup(by, worst, 1.0, "steps/min >= 1.0x every policy, worst case")
        for ta in (TA_CODED, TA_INTENDED):
            if ta in by and by[ta].pauses and shoal.pauses:
                value = ratio(shoal.pause_p99, by[ta].pause_p99)
                checks.append(Check(scenario, f"p99 pause <= 0.5x {ta}", value, 0.5, value <= 0.5,
                                    f"{shoal.pause_p99:.1f} s vs {by[ta].pause_p99:.1f} s"))
            elif ta in by:
                checks.append(Check(scenario, f"p99 pause <= 0.5x {ta}", 0.0, 0.5, True,
                                    f"pauses: shoal {shoal.pauses}, {ta} {by[ta].pauses}"))
        checks.append(Check(scenario, "longest wait <= aging bound (s)", shoal.longest_wait, max_wait_s,
                            shoal.longest_wait <= max_wait_s + AGING_SLACK_S))
    return checks
