"""Circuit breaking, retry decisions and upstream timeouts."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from shoal.router.config import CircuitBreakerConfig, RetryConfig, TimeoutsConfig

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


class BreakerState(enum.Enum):
    CLOSED = "closed"
    """Serving."""
    OPEN = "open"
    """Ejected; no traffic until the ejection time is over."""
    HALF_OPEN = "half_open"
    """Ejection over; waiting for a successful health probe to readmit it."""


class CircuitBreaker:
    """One endpoint's breaker: consecutive failures eject it; a good probe readmits it.

    Each re-ejection without a success in between doubles the ejection time (capped), so
    a flapping endpoint is probed less and less often.
    """

    def __init__(self, cfg: CircuitBreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._ejections_in_a_row = 0
        self.open_until = 0.0

    @property
    def available(self) -> bool:
        """May live traffic go there?"""
        return self.state is BreakerState.CLOSED

    def record_success(self) -> bool:
        """A request or probe succeeded. Returns True when this readmits the endpoint."""
        readmitted = self.state is not BreakerState.CLOSED
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._ejections_in_a_row = 0
        return readmitted

    def record_failure(self) -> bool:
        """A request or probe failed. Returns True when this ejects the endpoint."""
        self.failures += 1
        if self.state is BreakerState.CLOSED and self.failures < self._cfg.consecutive_failures:
            return False
        was_closed = self.state is BreakerState.CLOSED
        duration = min(self._cfg.eject_s * (2**self._ejections_in_a_row), self._cfg.max_eject_s)
        self._ejections_in_a_row += 1
        self.state = BreakerState.OPEN
        self.open_until = self._clock() + duration
        return was_closed

    def should_probe(self) -> bool:
        """True when an ejected endpoint's time is over and it should be health-probed."""
        if self.state is BreakerState.OPEN and self._clock() >= self.open_until:
            self.state = BreakerState.HALF_OPEN
        return self.state is BreakerState.HALF_OPEN


@dataclass(frozen=True)
class RetryPolicy:
    """Whether a failed attempt may be retried on another endpoint (only before any byte reached
    the client, which the proxy guarantees by asking only then)."""

    cfg: RetryConfig

    def retry_status(self, status: int) -> bool:
        return self.cfg.retry_on_server_errors and status in RETRYABLE_STATUS


def httpx_timeout(cfg: TimeoutsConfig) -> httpx.Timeout:
    """Limits for the control-path client (the proxy enforces first-byte, idle and total itself)."""
    return httpx.Timeout(connect=cfg.connect_s, read=cfg.idle_s, write=cfg.idle_s, pool=cfg.connect_s)
