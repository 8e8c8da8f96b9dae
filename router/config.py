"""Router configuration: the schema of ``router.yaml``.

``RouterSettings`` holds what a deployer chooses; ``RouterConfig`` adds the wiring (bind
address, pools' replicas, credentials' locations). The ``Router`` custom resource's spec is
``RouterSettings`` plus Kubernetes fields, and the operator renders this file by serializing
that spec and adding the wiring, so this module is the one schema of both. Every model is strict (unknown keys are errors). Keys are
camelCase in YAML (the Kubernetes convention, and what ``RouterConfig.json_schema()``
and ``RouterConfig.to_yaml_dict()`` produce); the snake_case field names are accepted
too. Durations are seconds (``...S`` suffix), sizes are bytes.

Minimal example::

    listen: {host: 0.0.0.0, port: 8080}
    pools:
      - name: chat
        models: [qwen2.5-0.5b]
        aliases: [gpt-4o-mini]
        endpoints:
          static: [http://10.0.0.5:8000, http://10.0.0.6:8000]
    picking:
      scorers:
        - {type: prefix-affinity, weight: 3}
        - {type: queue-depth, weight: 1}
"""


from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from shoal.router.config_access import (
    AuthConfig,
    AuthSettings,
    RateLimit,
    RateLimitsConfig,
    TenancyConfig,
    UpstreamConfig,
)
from shoal.router.config_base import StrictModel as _Strict
from shoal.router.config_peers import PeersConfig, PeerSettings
from shoal.router.config_picking import PickingConfig, PluginSpec, PrefixConfig
from shoal.router.config_pools import (
    EndpointsConfig,
    KubernetesEndpoints,
    PoolConfig,
    PoolSettings,
    TokenizerConfig,
)
from shoal.router.config_reliability import (
    CircuitBreakerConfig,
    HealthConfig,
    LimitsConfig,
    RetryConfig,
    TimeoutsConfig,
)
from shoal.router.config_routes import RouteConfig, RouteRule, SplitTarget
from shoal.router.programs.config import ProgramsConfig

__all__ = [
    "AuthConfig",
    "AuthSettings",
    "CircuitBreakerConfig",
    "EndpointsConfig",
    "HealthConfig",
    "KubernetesEndpoints",
    "LimitsConfig",
    "ListenConfig",
    "PeerSettings",
    "PeersConfig",
    "PickingConfig",
    "PluginSpec",
    "PoolConfig",
    "PoolSettings",
    "PrefixConfig",
    "ProgramsConfig",
    "RateLimit",
    "RateLimitsConfig",
    "RetryConfig",
    "RouteConfig",
    "RouteRule",
    "RouterConfig",
    "RouterSettings",
    "SplitTarget",
    "TenancyConfig",
    "TimeoutsConfig",
    "TokenizerConfig",
    "UpstreamConfig",
    "load_config",
]


class ListenConfig(_Strict):
    """Where the router listens."""

    host: str = "0.0.0.0"
    """Address the router binds (the CLI's ``--host`` overrides it)."""
    port: int = Field(default=8080, ge=1, le=65535)
    """Port the router binds (the CLI's ``--port`` overrides it)."""


class RouterSettings(_Strict):
    """The router's settings: everything a deployer chooses (the ``Router`` custom resource's spec
    holds exactly these, beside its Kubernetes fields)."""

    routes: list[RouteConfig] = Field(default_factory=list)
    """Client-facing names mapped to pools (a pool's own models/aliases route to it without one)."""
    picking: PickingConfig = Field(default_factory=lambda: PickingConfig())
    """Default endpoint picking for pools without their own."""
    auth: AuthSettings | None = None
    """API keys; None: every request is accepted."""
    rate_limits: RateLimitsConfig = Field(default_factory=lambda: RateLimitsConfig())
    """Per-key token buckets."""
    timeouts: TimeoutsConfig = Field(default_factory=lambda: TimeoutsConfig())
    """Upstream and client timeouts."""
    retries: RetryConfig = Field(default_factory=lambda: RetryConfig())
    """Retry policy."""
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=lambda: CircuitBreakerConfig())
    """Ejection of failing endpoints."""
    health: HealthConfig = Field(default_factory=lambda: HealthConfig())
    """Endpoint polling."""
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig())
    """Request sizes and the upstream connection pool."""
    programs: ProgramsConfig = Field(default_factory=lambda: ProgramsConfig())
    """Agent-program scheduling and program classes."""
    peers: PeerSettings | None = None
    """Other replicas of this router, for program ownership; None: a single replica."""
    tenancy: TenancyConfig = Field(default_factory=lambda: TenancyConfig())
    """Tenant identity and prefix-cache sharing."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Router log level. Request bodies and API keys are never logged."""

    @model_validator(mode="after")
    def _settings_check(self) -> RouterSettings:
        if self.circuit_breaker.max_eject_s < self.circuit_breaker.eject_s:
            raise ValueError("circuitBreaker.maxEjectS must be >= ejectS")
        for key, limit in self.rate_limits.per_key.items():
            if not key:
                raise ValueError(f"empty key name in rateLimits.perKey ({limit})")
        return self


class RouterConfig(RouterSettings):
    """Everything one router process needs: its settings plus the wiring."""

    listen: ListenConfig = Field(default_factory=lambda: ListenConfig())
    """Bind address."""
    pools: list[PoolConfig] = Field(min_length=1)
    """Engine pools; each model name or alias belongs to exactly one pool or route."""
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig())
    """API keys: where they are, and how they are used."""
    peers: PeersConfig | None = None
    """Other replicas of this router, for program ownership; None: a single replica."""
    upstream: UpstreamConfig = Field(default_factory=lambda: UpstreamConfig())
    """The router's credential towards engines."""

    @model_validator(mode="after")
    def _cross_check(self) -> RouterConfig:
        pools = {p.name for p in self.pools}
        if len(pools) != len(self.pools):
            raise ValueError("pool names must be unique")
        owner: dict[str, str] = {}

        def claim(name: str, who: str) -> None:
            if name in owner and owner[name] != who:
                raise ValueError(f"model name {name!r} is claimed by both {owner[name]} and {who}")
            owner[name] = who

        for pool in self.pools:
            for name in [*pool.models, *pool.aliases]:
                claim(name, f"pool {pool.name}")
        for route in self.routes:
            for name in [route.model, *route.aliases]:
                if owner.get(name, "").startswith("route"):
                    raise ValueError(f"model name {name!r} is routed twice")
                # A route may override a pool's own name (e.g. to split it); pool claims yield.
                owner[name] = f"route {route.model}"
            targets = [route.pool] if route.pool else [s.pool for s in route.split or []]
            targets += [rule.pool for rule in route.rules]
            for target in targets:
                if target not in pools:
                    raise ValueError(f"route {route.model!r} targets unknown pool {target!r}")
        return self

    def picking_for(self, pool: PoolConfig) -> PickingConfig:
        """The picking settings in force for ``pool``."""
        return pool.picking or self.picking

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON schema of ``router.yaml`` (camelCase keys), printed by ``--print-schema``."""
        return cls.model_json_schema(by_alias=True, mode="validation")

    def to_yaml_dict(self) -> dict[str, Any]:
        """A plain dict with camelCase keys that ``load_config`` reads back to an equal config."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def load_config(path: str | Path) -> RouterConfig:
    """Read and validate a YAML (or JSON) router config file."""
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return RouterConfig.model_validate(data)

