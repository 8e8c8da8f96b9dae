"""The router's Prometheus metrics, in a registry of its own (one per app instance).

Labels carry pool names, endpoint URLs, statuses and plugin names: never API keys.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from shoal.router.picking.runner import PickResult

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_PLUGIN_BUCKETS = (1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.01)
_RATIO_BUCKETS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


class RouterMetrics:
    """All router metrics; implements the picking and endpoint observer hooks."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "shoal_router_requests", "Requests finished, by pool, endpoint and HTTP status.",
            ["pool", "endpoint", "status"], registry=r,
        )
        self.duration = Histogram(
            "shoal_router_request_duration_seconds", "Request time as the router saw it.",
            ["pool"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "shoal_router_time_to_first_byte_seconds",
            "Router-observed time to first token: request arrival to the first response byte from the engine.",
            ["pool"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.retries = Counter(
            "shoal_router_retries", "Attempts retried on another endpoint, by reason.", ["pool", "reason"], registry=r
        )
        self.ejections = Counter(
            "shoal_router_endpoint_ejections", "Endpoints ejected by the circuit breaker.", ["pool", "endpoint"], registry=r
        )
        self.readmissions = Counter(
            "shoal_router_endpoint_readmissions", "Ejected endpoints readmitted after a good probe.",
            ["pool", "endpoint"], registry=r,
        )
        self.endpoints = Gauge("shoal_router_endpoints", "Endpoints known per pool.", ["pool"], registry=r)
        self.inflight = Gauge("shoal_router_inflight_requests", "Requests open upstream.", ["pool"], registry=r)
        self.plugin_latency = Histogram(
            "shoal_router_plugin_duration_seconds", "Time spent in each picking plugin per pick.",
            ["pool", "plugin"], buckets=_PLUGIN_BUCKETS, registry=r,
        )
        self.picks = Counter(
            "shoal_router_picks", "Picks per endpoint; decided_by is 'score' or 'tiebreak'.",
            ["pool", "endpoint", "decided_by"], registry=r,
        )
        self.scorer_outcomes = Counter(
            "shoal_router_scorer_outcomes",
            "Per scorer and pick: 'top' (the chosen endpoint had this scorer's best score), "
            "'overruled' (another had a better one), 'flat' (no preference).",
            ["pool", "scorer", "outcome"], registry=r,
        )
        self.prefix_match = Histogram(
            "shoal_router_prefix_match_ratio", "Prefix-affinity score of the chosen endpoint.",
            ["pool"], buckets=_RATIO_BUCKETS, registry=r,
        )
        self.rejected = Counter(
            "shoal_router_rejected", "Requests the router answered itself, by reason.", ["reason"], registry=r
        )
        self.client_disconnects = Counter(
            "shoal_router_client_disconnects", "Requests whose client went away before the end.", ["pool"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # picking observer ------------------------------------------------------------------------------

    def observe_pick(self, pool: str, result: PickResult) -> None:
        for plugin, seconds in result.timings_s.items():
            self.plugin_latency.labels(pool, plugin).observe(seconds)
        chosen = result.chosen.url
        self.picks.labels(pool, chosen, "tiebreak" if result.tie else "score").inc()
        for scorer, scores in result.per_scorer.items():
            values = scores.values()
            best, worst = max(values), min(values)
            if best == worst:
                outcome = "flat"
            elif scores[chosen] >= best:
                outcome = "top"
            else:
                outcome = "overruled"
            self.scorer_outcomes.labels(pool, scorer, outcome).inc()
        prefix = result.per_scorer.get("prefix-affinity")
        if prefix is not None:
            self.prefix_match.labels(pool).observe(prefix[chosen])

    # endpoint observer -----------------------------------------------------------------------------

    def endpoint_ejected(self, pool: str, url: str) -> None:
        self.ejections.labels(pool, url).inc()

    def endpoint_readmitted(self, pool: str, url: str) -> None:
        self.readmissions.labels(pool, url).inc()

    def endpoints_changed(self, pool: str, urls: Iterable[str]) -> None:
        self.endpoints.labels(pool).set(len(list(urls)))
