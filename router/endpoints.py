"""Endpoint state: health (circuit breaker), scraped engine metrics with staleness, load."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from shoal.router.config import CircuitBreakerConfig
from shoal.router.picking.types import Candidate, EndpointMetrics
from shoal.router.programs.state import EngineCapacity
from shoal.router.reliability import CircuitBreaker

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
_WANTED = (RUNNING, WAITING, KV_USAGE)


class EndpointObserver(Protocol):
    """Told about health transitions (the metrics module implements it)."""

    def endpoint_ejected(self, pool: str, url: str) -> None: ...

    def endpoint_readmitted(self, pool: str, url: str) -> None: ...

    def endpoints_changed(self, pool: str, urls: Iterable[str]) -> None: ...


def parse_engine_metrics(text: str) -> tuple[float, float, float] | None:
    """(running, waiting, kv_usage) from Prometheus text; series are summed (KV usage: max).

    None when the engine exposes none of the three. A tiny parser on purpose: this runs
    for every endpoint every scrape interval, and only three names matter.
    """
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_end = len(line)
        for sep in ("{", " "):
            idx = line.find(sep)
            if idx != -1:
                name_end = min(name_end, idx)
        name = line[:name_end]
        if name not in _WANTED:
            continue
        try:
            close = line.rfind("}")
            value = float((line[close + 1 :] if close != -1 else line[name_end:]).split()[0])
        except (ValueError, IndexError):
            continue
        if value != value:  # NaN
            continue
        if name == KV_USAGE:
            found[name] = max(found.get(name, 0.0), value)
        else:
            found[name] = found.get(name, 0.0) + value
    if not found:
        return None
    kv = found.get(KV_USAGE, 0.0)
    if kv > 1.0:  # some servers report a percentage
        kv /= 100.0
    return found.get(RUNNING, 0.0), found.get(WAITING, 0.0), min(max(kv, 0.0), 1.0)


_KV_NAMES = {
    "shoal:kv_blocks_total": "total_blocks",
    "shoal:free_blocks": "free_blocks",
    "shoal:kv_blocks_cached": "cached_blocks",
    "shoal:pinned_blocks": "pinned_blocks",
    "shoal:kv_block_size": "block_size",
}


def parse_kv_capacity(text: str) -> EngineCapacity | None:
    """The engine's KV pool (``shoal:`` metrics, series summed) for the program scheduler;
    None when it reports no ``shoal:kv_blocks_total`` (not a Shoal engine, or an old one)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("shoal:"):
            continue
        name, _, rest = line.partition("{" if "{" in line.split(" ", 1)[0] else " ")
        field = _KV_NAMES.get(name)
        if field is None:
            continue
        try:
            value = float(rest.rsplit("}", 1)[-1].split()[0])
        except (ValueError, IndexError):
            continue
        if value == value:  # not NaN
            found[field] = found.get(field, 0.0) + value
    if "total_blocks" not in found:
        return None
    values = {k: int(v) for k, v in found.items()}
    values["block_size"] = max(1, values.get("block_size", 16))
    return EngineCapacity(**values)


class EndpointState:
    """Everything the router knows about one engine replica. Mutated only on the event loop."""

    __slots__ = (
        "breaker",
        "inflight",
        "kv_capacity",
        "metrics",
        "models",
        "pool",
        "scraped_at",
        "sent_since_scrape",
        "url",
    )

    def __init__(self, url: str, pool: str, breaker: CircuitBreaker) -> None:
        self.url = url
        self.pool = pool
        self.breaker = breaker
        self.metrics: tuple[float, float, float] | None = None
        self.scraped_at = 0.0
        self.inflight = 0
        self.sent_since_scrape = 0
        self.models: frozenset[str] | None = None
        self.kv_capacity: EngineCapacity | None = None
        """The engine's KV pool from the latest scrape (program scheduling); None: unknown."""

    def set_metrics(self, values: tuple[float, float, float] | None, at: float) -> None:
        self.metrics = values
        if values is None:
            self.kv_capacity = None
        self.scraped_at = at
        self.sent_since_scrape = 0

    def candidate(self, now: float, stale_after_s: float) -> Candidate:
        """A snapshot for picking; metrics older than ``stale_after_s`` are withheld."""
        metrics = None
        age = now - self.scraped_at
        if self.metrics is not None and age <= stale_after_s:
            running, waiting, kv = self.metrics
            metrics = EndpointMetrics(running, waiting, kv, age)
        return Candidate(
            url=self.url,
            pool=self.pool,
            healthy=self.breaker.available,
            models=self.models,
            metrics=metrics,
            inflight=self.inflight,
            sent_since_scrape=self.sent_since_scrape,
        )


class EndpointSet:
    """A pool's current endpoints, kept in step with discovery."""

    def __init__(
        self,
        pool: str,
        breaker_cfg: CircuitBreakerConfig,
        stale_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        observer: EndpointObserver | None = None,
    ) -> None:
        self.pool = pool
        self._breaker_cfg = breaker_cfg
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._observer = observer
        self._states: dict[str, EndpointState] = {}
        self._reset_hooks: list[Callable[[str], None]] = []

    def on_reset(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(url)`` when an endpoint leaves the pool or is readmitted after an ejection:
        either way what was known about its cache no longer holds."""
        self._reset_hooks.append(hook)

    def set_urls(self, urls: Iterable[str]) -> None:
        """Replace the membership (discovery's latest view); known endpoints keep their state."""
        wanted = list(dict.fromkeys(u.rstrip("/") for u in urls))
        for url in list(self._states):
            if url not in wanted:
                del self._states[url]
                for hook in self._reset_hooks:
                    hook(url)
        for url in wanted:
            if url not in self._states:
                self._states[url] = EndpointState(url, self.pool, CircuitBreaker(self._breaker_cfg, self._clock))
        if self._observer is not None:
            self._observer.endpoints_changed(self.pool, list(self._states))

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[EndpointState]:
        return iter(list(self._states.values()))

    def get(self, url: str) -> EndpointState | None:
        return self._states.get(url)

    def candidates(self) -> list[Candidate]:
        now = self._clock()
        return [s.candidate(now, self._stale_after_s) for s in self._states.values()]

    def record_failure(self, url: str) -> None:
        """A request or probe to ``url`` failed (may eject it)."""
        state = self._states.get(url)
        if state is not None and state.breaker.record_failure() and self._observer is not None:
            self._observer.endpoint_ejected(self.pool, url)

    def eject(self, url: str) -> bool:
        """The engine's own health check failed: take it out now. True when it was serving."""
        state = self._states.get(url)
        if state is None or not state.breaker.eject():
            return False
        if self._observer is not None:
            self._observer.endpoint_ejected(self.pool, url)
        return True

    def record_success(self, url: str) -> None:
        """A request to ``url`` succeeded."""
        state = self._states.get(url)
        if state is not None:
            state.breaker.record_success()

    def probe_passed(self, url: str, at_once: bool = False) -> bool:
        """``url``'s ``/health`` answered 200; readmits it once its hold time is over, or
        ``at_once`` (True then)."""
        state = self._states.get(url)
        if state is None or not state.breaker.probe_passed(at_once):
            return False
        for hook in self._reset_hooks:
            hook(url)
        if self._observer is not None:
            self._observer.endpoint_readmitted(self.pool, url)
        return True
