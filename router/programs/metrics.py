"""Prometheus metrics of program scheduling, on the router's registry.

Gauges and totals are read from the scheduler at scrape time (one source of truth); the
pause-duration histogram is fed as programs resume.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shoal.router.programs.scheduler import ProgramScheduler

_PAUSE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


class ProgramMetrics(Collector):
    """``shoal_router_programs{class,state,activity}``, pauses, resumes, pause seconds, steps,
    lease expiries, terminations, and the KV working set and capacity per engine."""

    def __init__(self, scheduler: ProgramScheduler, registry: CollectorRegistry) -> None:
        self._scheduler = scheduler
        self.pause_seconds = Histogram(
            "shoal_router_program_pause_seconds", "Time programs spent paused, observed as they resume.",
            ["class"], buckets=_PAUSE_BUCKETS, registry=registry,
        )
        registry.register(self)

    def observe(self) -> None:
        """Move the scheduler's pending pause durations into the histogram."""
        for class_name, seconds in self._scheduler.counters.drain_pause_seconds():
            self.pause_seconds.labels(class_name).observe(seconds)

    def describe(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        return []  # collected dynamically: label sets depend on the classes loaded

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._scheduler
        programs = GaugeMetricFamily(
            "shoal_router_programs", "Agent programs by class, lifecycle state and activity.",
            labels=["class", "state", "activity"],
        )
        for (cls, state, activity), count in sorted(s.program_counts().items()):
            programs.add_metric([cls, state, activity], count)
        yield programs
        c = s.counters
        for name, help_text, values in (
            ("shoal_router_program_pauses", "Programs paused under KV pressure.", c.pauses),
            ("shoal_router_program_resumes", "Paused programs resumed.", c.resumes),
            ("shoal_router_program_steps", "Program LLM calls finished (a call and its tool run: a step).", c.steps),
            ("shoal_router_program_lease_expiries", "Programs terminated by their lease.", c.lease_expiries),
            ("shoal_router_program_forced_admissions", "Calls admitted by the aging bound.", c.forced_admissions),
        ):
            family = CounterMetricFamily(name, help_text, labels=["class"])
            for cls, value in sorted(values.items()):
                family.add_metric([cls], value)
            yield family
        ended = CounterMetricFamily(
            "shoal_router_program_terminations", "Programs ended, by class and reason.", labels=["class", "reason"]
        )
        for (cls, reason), value in sorted(c.terminations.items()):
            ended.add_metric([cls, reason], value)
        yield ended
        working = GaugeMetricFamily(
            "shoal_router_program_kv_working_set_tokens", "KV tokens the programs hold per engine.", labels=["engine"]
        )
        for engine, tokens in sorted(s.working_sets().items()):
            working.add_metric([engine], tokens)
        yield working
        capacity = GaugeMetricFamily(
            "shoal_router_program_kv_capacity_tokens", "KV tokens each engine reports.", labels=["engine"]
        )
        for engine, cap in sorted(s.engines().items()):
            capacity.add_metric([engine], cap.total_tokens)
        yield capacity
