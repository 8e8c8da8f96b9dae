"""Sandbox metrics (``shoal_router_sandbox_*``), registered on the router's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_START_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOOL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class SandboxMetrics:
    """Sandboxes by state, starts (cold/warm) and their time, tool calls, removals and leaks."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self.sandboxes = Gauge(
            "shoal_router_sandboxes", "Sandboxes alive, by state (preparing, idle, busy, warm).", ["state"],
            registry=r,
        )  # fmt: skip
        self.processes = Gauge("shoal_router_sandbox_processes", "Processes (or pods) the sandboxes hold.", registry=r)
        self.ports = Gauge("shoal_router_sandbox_ports", "Listening ports the sandboxes hold.", registry=r)
        self.disk_bytes = Gauge("shoal_router_sandbox_disk_bytes", "Disk bytes the sandboxes use.", registry=r)
        self.starts = Counter(
            "shoal_router_sandbox_starts", "Sandboxes handed to programs: 'warm' from the pool, 'prewarmed' "
            "(prepared before the first call), 'cold' (the first call waited for all of it).", ["kind"], registry=r,
        )  # fmt: skip
        self.start_seconds = Histogram(
            "shoal_router_sandbox_start_seconds", "Time a program's first tool call waited for its sandbox.",
            ["kind"], buckets=_START_BUCKETS, registry=r,
        )  # fmt: skip
        self.prepare_seconds = Histogram(
            "shoal_router_sandbox_prepare_seconds", "Time to create and prepare one sandbox.",
            buckets=_START_BUCKETS, registry=r,
        )  # fmt: skip
        self.tool_calls = Counter(
            "shoal_router_tool_calls", "Tool calls by class, tool and outcome (ok, failed, timeout).",
            ["program_class", "tool", "outcome"], registry=r,
        )  # fmt: skip
        self.tool_seconds = Histogram(
            "shoal_router_tool_duration_seconds", "Tool call durations.", ["program_class", "tool"],
            buckets=_TOOL_BUCKETS, registry=r,
        )  # fmt: skip
        self.removed = Counter(
            "shoal_router_sandboxes_removed", "Sandboxes removed, by reason (release, ttl, orphan, failed, ...).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.leaks = Counter(
            "shoal_router_sandbox_leaks", "Sandboxes that could not be removed (each one is also logged).", registry=r
        )
