"""Values that flow through endpoint picking (all immutable)."""

from __future__ import annotations

from dataclasses import dataclass

EndpointId = str
"""An endpoint is identified by its base URL, e.g. ``http://10.0.0.5:8000``."""


@dataclass(frozen=True, slots=True)
class EndpointMetrics:
    """What the engine's ``/metrics`` said at the last scrape."""

    running: float
    """``vllm:num_requests_running``."""
    waiting: float
    """``vllm:num_requests_waiting``."""
    kv_usage: float
    """``vllm:kv_cache_usage_perc`` as a fraction in [0, 1]."""
    age_s: float
    """Seconds since the scrape."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One endpoint as the picker sees it at pick time."""

    url: EndpointId
    pool: str
    healthy: bool
    """False while the circuit breaker has it ejected."""
    models: frozenset[str] | None
    """Model names it serves (``/v1/models``); None until first fetched."""
    metrics: EndpointMetrics | None
    """Last scraped engine metrics, or None when missing or stale."""
    inflight: int
    """Requests this router has open on it now."""
    sent_since_scrape: int
    """Requests this router sent since ``metrics`` were taken (not yet visible in them)."""


@dataclass(frozen=True, slots=True)
class PickRequest:
    """The request facts plugins may use (the body itself stays with the proxy)."""

    request_id: str
    model: str
    """Model name as forwarded to the engine."""
    pool: str
    block_hashes: tuple[int, ...] = ()
    """Chained block hashes of the prompt's full blocks (``shoal.engine.block_hash``)."""
    prompt_tokens: int = 0
    """Prompt length in tokens (estimated when no tokenizer is available)."""
    program_id: str | None = None
    session_id: str | None = None
    content_key: str = ""
    """A digest of the prompt text: the tie-break key of prompts too short to fill a block."""

    @property
    def affinity_key(self) -> str | None:
        """Program id, else session id: what session affinity hashes."""
        return self.program_id or self.session_id

    @property
    def tie_key(self) -> str:
        """Deterministic key for tie-breaking, equal on every router replica for the same request."""
        if self.program_id:
            return "p:" + self.program_id
        if self.session_id:
            return "s:" + self.session_id
        if self.block_hashes:
            return f"h:{self.block_hashes[-1]:x}"
        return "c:" + (self.content_key or self.request_id)


@dataclass(frozen=True, slots=True)
class Scored:
    """A candidate with its weighted total score."""

    candidate: Candidate
    score: float
