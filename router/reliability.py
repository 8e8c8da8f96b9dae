"""Circuit breaking, retry decisions and upstream timeouts."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from shoal.router.config import CircuitBreakerConfig, RetryConfig, TimeoutsConfig

SERVER_ERROR_STATUS = frozenset({500, 502, 503, 504})
"""Engine answers that may be retried on another engine (a bounded number of times)."""
FULL_STATUS = 429
"""The engine has no room: try another engine with room, else pass the 429 (and Retry-After) on."""


class BreakerState(enum.Enum):
    CLOSED = "closed"
    """Serving."""
    OPEN = "open"
    """Ejected: no live traffic. Readmitted by the first good health probe after ``open_until``."""


class CircuitBreaker:
    """One endpoint's breaker: consecutive failures (or a failed health probe) eject it; a good
    health probe once the hold time is over readmits it.

    The hold time is short (``eject_s``) and doubles only when an endpoint is ejected again
    soon after a readmission (flapping), capped at ``max_eject_s``. Failures while it is
    already ejected (requests that were in flight at the moment of ejection, failed probes
    of a dead engine) change nothing: one outage is one ejection, so an engine that comes
    back after a long outage is readmitted at the next probe.
    """

    def __init__(self, cfg: CircuitBreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._flaps = 0
        self._readmitted_at = float("-inf")
        self.open_until = 0.0

    @property
    def available(self) -> bool:
        """May live traffic go there?"""
        return self.state is BreakerState.CLOSED

    def record_success(self) -> None:
        """A request succeeded: the run of failures is over (only a health probe readmits)."""
        if self.state is BreakerState.CLOSED:
            self.failures = 0

    def probe_passed(self, at_once: bool = False) -> bool:
        """The engine's ``/health`` answered 200. Returns True when this readmits the endpoint
        (it stays out until its hold time is over, unless ``at_once``)."""
        if self.state is BreakerState.CLOSED:
            self.failures = 0
            return False
        now = self._clock()
        if now < self.open_until and not at_once:
            return False
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._readmitted_at = now
        return True

    def record_failure(self) -> bool:
        """A request failed (connect error, reset, timeout). Returns True when this ejects the endpoint."""
        if self.state is BreakerState.OPEN:
            return False  # already out: concurrent failures of one outage count once
        self.failures += 1
        if self.failures < self._cfg.consecutive_failures:
            return False
        return self.eject()

    def eject(self) -> bool:
        """Eject now (the engine's own health check failed). Returns True when it was serving."""
        if self.state is BreakerState.OPEN:
            return False
        now = self._clock()
        recently_readmitted = now - self._readmitted_at < self._cfg.max_eject_s
        self._flaps = self._flaps + 1 if recently_readmitted else 0
        duration = min(self._cfg.eject_s * (2**self._flaps), self._cfg.max_eject_s)
        self.state = BreakerState.OPEN
        self.open_until = now + duration
        self.failures = 0
        return True


@dataclass(frozen=True)
class RetryPolicy:
    """Whether a failed attempt may be retried on another endpoint (only before any byte reached
    the client, which the proxy guarantees by asking only then)."""

    cfg: RetryConfig

    def retry_server_error(self, status: int, server_errors_so_far: int) -> bool:
        """A 5xx answer: retried elsewhere at most ``max_server_error_retries`` times per request,
        so a request that breaks every engine (a poison request) is not spread over the pool."""
        return (
            self.cfg.retry_on_server_errors
            and status in SERVER_ERROR_STATUS
            and server_errors_so_far <= self.cfg.max_server_error_retries
        )

    def retry_full(self, status: int) -> bool:
        """A 429 (engine full): try another engine with room."""
        return status == FULL_STATUS and self.cfg.retry_on_full


def httpx_timeout(cfg: TimeoutsConfig) -> httpx.Timeout:
    """Limits for the control-path client (the proxy enforces first-byte, idle and total itself)."""
    return httpx.Timeout(connect=cfg.connect_s, read=cfg.idle_s, write=cfg.idle_s, pool=cfg.connect_s)
