"""Reliability settings: timeouts, retries, the circuit breaker, health polling and size limits."""

from __future__ import annotations

from pydantic import Field

from shoal.router.config_base import StrictModel as _Strict


class TimeoutsConfig(_Strict):
    """Upstream (engine) and client-side timeouts."""

    connect_s: float = Field(default=2.0, gt=0)
    """TCP connect to an engine."""
    first_byte_s: float = Field(default=120.0, gt=0)
    """Until the engine's response headers and first body chunk (covers queueing + prefill)."""
    idle_s: float = Field(default=60.0, gt=0)
    """Longest gap between two chunks of a stream."""
    total_s: float = Field(default=600.0, gt=0)
    """Whole request, end to end."""
    client_header_s: float = Field(default=10.0, gt=0)
    """A client connection must send a complete request head within this (408 and close otherwise);
    also bounds a fresh connection that sends nothing."""
    client_body_s: float = Field(default=30.0, gt=0)
    """A client must send the whole request body within this (408 otherwise)."""
    client_keep_alive_s: float = Field(default=30.0, gt=0)
    """An idle client keep-alive connection is closed after this."""


class RetryConfig(_Strict):
    """Retries happen only before the first byte reaches the client, always on another endpoint."""

    max_attempts: int = Field(default=3, ge=1)
    """Attempts in total (1 = no retry)."""
    retry_on_server_errors: bool = True
    """Retry upstream 500/502/503/504 responses (connect errors and resets are always retried)."""
    max_server_error_retries: int = Field(default=1, ge=0)
    """Per request, at most this many retries after a 5xx answer: a request that breaks every
    engine it reaches (a poison request) is not spread over the pool."""
    retry_on_full: bool = True
    """Retry an upstream 429 (engine full) on another engine; when all are full the last 429 and
    its Retry-After reach the client."""


class CircuitBreakerConfig(_Strict):
    """Ejects endpoints that keep failing, then probes ``/health`` until they answer again."""

    consecutive_failures: int = Field(default=3, ge=1)
    """Failures in a row (connect errors, 5xx, failed health probes) that eject an endpoint."""
    eject_s: float = Field(default=2.0, gt=0)
    """Shortest time out after an ejection; doubled each time the endpoint is ejected again within
    ``max_eject_s`` of being readmitted (flapping), up to ``max_eject_s``. Failures while it is out
    change nothing, and it is readmitted by the first good ``/health`` probe after that time."""
    max_eject_s: float = Field(default=30.0, gt=0)
    """Upper bound of the ejection time."""


class HealthConfig(_Strict):
    """Background polling of every endpoint's ``/health`` and ``/metrics``."""

    scrape_interval_s: float = Field(default=0.5, gt=0)
    """How often ``/metrics`` (and ``/health``) is fetched from each endpoint."""
    stale_after_s: float = Field(default=3.0, gt=0)
    """Scraped metrics older than this are ignored by scorers (they fall back to router-local counts)."""
    models_interval_s: float = Field(default=15.0, gt=0)
    """How often each endpoint's ``/v1/models`` is refreshed (the serves-model filter)."""
    probe_timeout_s: float = Field(default=1.0, gt=0)
    """Timeout of one health/metrics/digest request."""


class LimitsConfig(_Strict):
    """Request size limits and the upstream connection pool."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 above)."""
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    """Largest request head (request line + all headers) accepted (431 above)."""
    max_header_count: int = Field(default=100, ge=8)
    """Most request headers accepted (431 above)."""
    max_tokenized_prompt_bytes: int = Field(default=256 * 1024, ge=0)
    """Prompts up to this size are templated and tokenized (off the event loop) for prefix
    affinity; a larger one is hashed as text over its first this-many bytes instead, so the
    router's work and memory per request stay bounded."""
    max_connections: int = Field(default=4096, ge=1)
    """Upstream connection pool size (all endpoints together)."""
    max_keepalive_connections: int = Field(default=1024, ge=0)
    """Idle upstream connections kept open."""
