"""Who may call the router and how much: API keys, rate limits, tenancy, and the router's own
credential towards engines."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shoal.router.config_base import StrictModel as _Strict


class AuthSettings(_Strict):
    """How API keys are used, whatever their source."""

    reload_interval_s: float = Field(default=10.0, gt=0)
    """How often the key file is checked for changes (Secret rotation)."""
    priority_keys: list[str] = Field(default_factory=list)
    """Key names allowed to set the body field ``priority`` (sent to engines as ``x-shoal-priority``);
    from any other key the field is dropped."""


class AuthConfig(AuthSettings):
    """API-key authentication. With neither source set, auth is off.
    Clients send ``Authorization: Bearer KEY`` (or ``x-api-key: KEY``). ``/health`` and
    ``/metrics`` are always open."""

    api_keys_file: str | None = None
    """A file with one key per line (``KEY`` or ``NAME:KEY``; ``#`` comments), or a directory
    such as a mounted Secret where each file holds one key and its file name names it.
    Re-read when it changes."""
    api_keys_env: str | None = None
    """Name of an environment variable holding comma-separated keys (``KEY`` or ``NAME:KEY``)."""

    @property
    def enabled(self) -> bool:
        return self.api_keys_file is not None or self.api_keys_env is not None


class RateLimit(_Strict):
    """A token bucket. A request takes one request token, and (if set) its estimated tokens."""

    requests_per_second: float = Field(gt=0)
    """Sustained request rate."""
    burst: int = Field(ge=1)
    """Bucket size in requests."""
    tokens_per_second: float | None = Field(default=None, gt=0)
    """Sustained LLM-token rate (prompt estimate + max_tokens, charged on admission); None: unlimited."""
    token_burst: int | None = Field(default=None, ge=1)
    """Token bucket size; defaults to ``tokensPerSecond`` x 10."""


class RateLimitsConfig(_Strict):
    """Per-API-key rate limits (per client address when auth is off). 429 + Retry-After when over."""

    default: RateLimit | None = None
    """Applies to every key without its own entry; None: unlimited."""
    per_key: dict[str, RateLimit] = Field(default_factory=dict)
    """By key name (the ``NAME`` in ``NAME:KEY``, or the Secret's file name)."""



class UpstreamConfig(_Strict):
    """The router's own credential towards engines (``Authorization: Bearer`` on every upstream
    request: generation, health, metrics, digest, tokenizer). At most one source; none: keyless."""

    api_key_env: str | None = None
    """Environment variable holding the engines' API key."""
    api_key_file: str | None = None
    """File holding the engines' API key (e.g. a mounted Secret), read at start."""

    @model_validator(mode="after")
    def _one(self) -> UpstreamConfig:
        if self.api_key_env is not None and self.api_key_file is not None:
            raise ValueError("upstream: set at most one of apiKeyEnv / apiKeyFile")
        return self


class TenancyConfig(_Strict):
    """Who a request belongs to, and whether tenants share the engines' prefix cache."""

    cache_sharing: Literal["perTenant", "shared"] = "perTenant"
    """``perTenant``: each tenant's prompts are cached under its own salt, so cached-token counts
    reveal nothing across tenants. ``shared``: one cache for all (more hits; only for tenants
    that trust each other)."""
    tenant_header: str | None = Field(default=None, min_length=1)
    """Behind a trusted gateway: take the tenant from this request header (else the API key's
    name, or ``anonymous`` with auth off)."""
