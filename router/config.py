"""Router configuration: the schema of ``router.yaml``.

The operator renders this file from the ``Router`` custom resource, so this module is
the contract between them. Every model is strict (unknown keys are errors). Keys are
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

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import AnyHttpUrl, Field, TypeAdapter, field_validator, model_validator

from shoal.router.config_base import StrictModel as _Strict
from shoal.router.programs.config import ProgramsConfig

__all__ = [
    "AuthConfig",
    "CircuitBreakerConfig",
    "EndpointsConfig",
    "HealthConfig",
    "KubernetesEndpoints",
    "LimitsConfig",
    "ListenConfig",
    "PeersConfig",
    "PickingConfig",
    "PluginSpec",
    "PoolConfig",
    "PrefixConfig",
    "ProgramsConfig",
    "RateLimit",
    "RateLimitsConfig",
    "RetryConfig",
    "RouteConfig",
    "RouteRule",
    "RouterConfig",
    "SplitTarget",
    "TenancyConfig",
    "TimeoutsConfig",
    "TokenizerConfig",
    "UpstreamConfig",
    "load_config",
]

_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)



# --------------------------------------------------------------------------- listen


class ListenConfig(_Strict):
    host: str = "0.0.0.0"
    """Address the router binds (the CLI's ``--host`` overrides it)."""
    port: int = Field(default=8080, ge=1, le=65535)
    """Port the router binds (the CLI's ``--port`` overrides it)."""


# --------------------------------------------------------------------------- pools


class KubernetesEndpoints(_Strict):
    """Discover a pool's replicas by watching the Kubernetes API (in-cluster or KUBECONFIG)."""

    namespace: str = "default"
    """Namespace to watch."""
    label_selector: str = Field(min_length=1)
    """Label selector, e.g. ``shoal.dev/pool=chat`` (pods) or ``kubernetes.io/service-name=chat`` (slices)."""
    resource: Literal["pods", "endpointslices"] = "pods"
    """Watch ready Pods (their pod IP) or EndpointSlices (ready addresses)."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Engine HTTP port on each replica."""
    port_name: str | None = None
    """For EndpointSlices: take the port with this name from the slice instead of ``port``."""
    scheme: Literal["http", "https"] = "http"
    """URL scheme to reach replicas."""


class EndpointsConfig(_Strict):
    """Where a pool's engine replicas are. Exactly one of ``static`` / ``kubernetes``."""

    static: list[str] | None = None
    """Fixed base URLs of engine replicas, e.g. ``http://127.0.0.1:8001`` (no trailing ``/v1``)."""
    kubernetes: KubernetesEndpoints | None = None
    """Discovery by label through the Kubernetes API."""

    @model_validator(mode="after")
    def _exactly_one(self) -> EndpointsConfig:
        if (self.static is None) == (self.kubernetes is None):
            raise ValueError("endpoints needs exactly one of 'static' or 'kubernetes'")
        return self

    @field_validator("static")
    @classmethod
    def _urls(cls, urls: list[str] | None) -> list[str] | None:
        if urls is None:
            return None
        out: list[str] = []
        for url in urls:
            _HTTP_URL.validate_python(url)
            clean = url.rstrip("/")
            if clean.endswith("/v1"):
                raise ValueError(f"endpoint URL must be the server root, without /v1: {url}")
            if clean in out:
                raise ValueError(f"duplicate endpoint URL: {url}")
            out.append(clean)
        return out


class TokenizerConfig(_Strict):
    """How the router tokenizes prompts for prefix affinity (it must match the engine exactly)."""

    source: Literal["engine", "file", "none"] = "engine"
    """``engine``: fetch ``GET /shoal/tokenizer`` from a replica (default; cannot drift).
    ``file``: a saved copy of that payload (JSON) at ``path``. ``none``: do not tokenize;
    approximate prefix affinity then hashes the prompt text in fixed-size chunks instead."""
    path: str | None = None
    """JSON file holding a ``/shoal/tokenizer`` payload (``source: file``)."""

    @model_validator(mode="after")
    def _path(self) -> TokenizerConfig:
        if (self.source == "file") != (self.path is not None):
            raise ValueError("tokenizer.path is required with source 'file' and only then")
        return self


class PluginSpec(_Strict):
    """One endpoint-picking plugin: a registered ``type`` plus its parameters."""

    type: str = Field(min_length=1)
    """Registered plugin name (see ``shoal.router.picking.registry``)."""
    weight: float = Field(default=1.0, ge=0.0)
    """Scorers only: multiplier of this scorer's [0, 1] score in the weighted sum."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Plugin-specific parameters, validated by the plugin when the router builds it."""


def _plugins(items: list[str | dict[str, Any] | PluginSpec]) -> list[PluginSpec | dict[str, Any]]:
    # A bare string is shorthand for {type: NAME}.
    return [{"type": item} if isinstance(item, str) else item for item in items]


class PrefixConfig(_Strict):
    """Prefix-affinity bookkeeping shared by the ``prefix-affinity`` scorer."""

    mode: Literal["approximate", "precise"] = "approximate"
    """``approximate``: remember, per endpoint, the block hashes of prompts sent there (LRU).
    ``precise``: poll each engine's ``GET /shoal/kv/digest`` and index what it really holds
    (plus what was sent since the last poll)."""
    lru_blocks_per_endpoint: int = Field(default=200_000, ge=1)
    """Approximate mode: most block hashes remembered per endpoint (about 8 bytes + overhead each)."""
    digest_interval_s: float = Field(default=1.0, gt=0)
    """Precise mode: how often each engine's KV digest is polled."""
    block_size: int | None = Field(default=None, ge=1)
    """Tokens per block; None takes the engine's (from ``/shoal/tokenizer``), else 16."""


class PickingConfig(_Strict):
    """Endpoint picking: filters narrow the candidates, weighted scorers rank them, a picker chooses."""

    filters: list[PluginSpec] = Field(
        default_factory=lambda: [PluginSpec(type=t) for t in ("healthy", "serves-model", "not-saturated")]
    )
    """Applied in order. Default: healthy, serves-model, not-saturated."""
    scorers: list[PluginSpec] = Field(
        default_factory=lambda: [
            PluginSpec(type="prefix-affinity", weight=3.0),
            PluginSpec(type="queue-depth", weight=1.0),
            PluginSpec(type="kv-usage", weight=1.0),
            PluginSpec(type="session-affinity", weight=1.0),
        ]
    )
    """Each returns a score in [0, 1] per endpoint (the runner clamps), multiplied by ``weight``."""
    picker: PluginSpec = Field(default_factory=lambda: PluginSpec(type="max-score"))
    """Chooses from the scored candidates; ``max-score`` breaks ties by consistent hashing."""
    prefix: PrefixConfig = Field(default_factory=lambda: PrefixConfig())
    """Prefix-affinity mode and sizes."""

    @field_validator("filters", "scorers", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _plugins(value) if isinstance(value, list) else value

    @field_validator("picker", mode="before")
    @classmethod
    def _picker(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _known(self) -> PickingConfig:
        # Imported here: the registry imports the plugins, which import this module's types.
        from shoal.router.picking.registry import validate_spec

        for spec in self.filters:
            validate_spec("filter", spec)
        for spec in self.scorers:
            validate_spec("scorer", spec)
        validate_spec("picker", self.picker)
        return self


class PoolConfig(_Strict):
    """A set of interchangeable engine replicas serving the same model(s)."""

    name: str = Field(pattern=_NAME, max_length=63)
    """DNS-label name, unique among pools."""
    models: list[str] = Field(min_length=1)
    """Served model names the engines answer to; the first is the one requests are rewritten to."""
    aliases: list[str] = Field(default_factory=list)
    """Extra names clients may ask for; requests are forwarded as ``models[0]``."""
    endpoints: EndpointsConfig
    """Where the replicas are."""
    tokenizer: TokenizerConfig = Field(default_factory=lambda: TokenizerConfig())
    """How prompts are tokenized for prefix affinity."""
    picking: PickingConfig | None = None
    """Overrides the router-wide ``picking`` for this pool."""


# --------------------------------------------------------------------------- routes


class SplitTarget(_Strict):
    pool: str
    """Target pool name."""
    weight: float = Field(gt=0)
    """Relative share of requests (weights need not sum to anything)."""


class RouteRule(_Strict):
    """Send a request to ``pool`` when its prompt text matches. Keywords and regex are OR-ed."""

    keywords: list[str] = Field(default_factory=list)
    """Case-insensitive substrings of the prompt (all messages' text, or the completion prompt)."""
    regex: str | None = None
    """Python regular expression searched in the prompt text."""
    pool: str
    """Pool for matching requests."""

    @model_validator(mode="after")
    def _check(self) -> RouteRule:
        if not self.keywords and self.regex is None:
            raise ValueError("a rule needs 'keywords' or 'regex'")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"invalid regex {self.regex!r}: {exc}") from exc
        return self


class RouteConfig(_Strict):
    """Maps a client-facing model name to pools. Rules are tried in order, first match wins;
    otherwise ``pool`` or a weighted ``split`` applies (exactly one of the two)."""

    model: str = Field(min_length=1)
    """Model name clients send."""
    aliases: list[str] = Field(default_factory=list)
    """Other names for this route."""
    pool: str | None = None
    """Default pool."""
    split: list[SplitTarget] | None = None
    """Weighted split across pools (sticky per program/session id when the request has one)."""
    rules: list[RouteRule] = Field(default_factory=list)
    """Prompt-content rules, tried before the default."""

    @model_validator(mode="after")
    def _target(self) -> RouteConfig:
        if (self.pool is None) == (self.split is None):
            raise ValueError(f"route {self.model!r} needs exactly one of 'pool' or 'split'")
        if self.split is not None and not self.split:
            raise ValueError(f"route {self.model!r}: split is empty")
        return self


# --------------------------------------------------------------------------- security


class AuthConfig(_Strict):
    """API-key authentication. With neither source set, auth is off.
    Clients send ``Authorization: Bearer KEY`` (or ``x-api-key: KEY``). ``/health`` and
    ``/metrics`` are always open."""

    api_keys_file: str | None = None
    """A file with one key per line (``KEY`` or ``NAME:KEY``; ``#`` comments), or a directory
    such as a mounted Secret where each file holds one key and its file name names it.
    Re-read when it changes."""
    api_keys_env: str | None = None
    """Name of an environment variable holding comma-separated keys (``KEY`` or ``NAME:KEY``)."""
    reload_interval_s: float = Field(default=10.0, gt=0)
    """How often the key file is checked for changes (Secret rotation)."""
    priority_keys: list[str] = Field(default_factory=list)
    """Key names allowed to set the body field ``priority`` (sent to engines as ``x-shoal-priority``);
    from any other key the field is dropped."""

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


# --------------------------------------------------------------------------- reliability


class TimeoutsConfig(_Strict):
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


class PeersConfig(_Strict):
    """The other replicas of this router (``Router.spec.replicas`` > 1). Each agent program is
    owned by one replica, chosen by rendezvous hashing of its id over the live replicas; the
    others forward that program's requests to it. Unset: this router owns every program."""

    self_url: str | None = Field(default=None, alias="self")
    """This replica's URL as the others reach it, e.g. ``http://10.0.0.5:8080``. With
    ``kubernetes`` discovery it defaults to ``http://$POD_IP:<kubernetes.port>`` (downward API)."""
    static: list[str] | None = None
    """Base URLs of every replica (this one may be listed too)."""
    kubernetes: KubernetesEndpoints | None = None
    """Discover the replicas as this Router's own ready pods by label (``port``: the router's)."""
    health_interval_s: float = Field(default=1.0, gt=0)
    """How often each other replica's ``/health`` is probed (any answer means alive)."""
    down_after_failures: int = Field(default=2, ge=1)
    """Failed probes in a row after which a replica counts as dead (a failed forward counts at once)."""
    probe_timeout_s: float = Field(default=1.0, gt=0)
    """Timeout of one ``/health`` probe (a busy replica must not look dead)."""

    @model_validator(mode="after")
    def _check(self) -> PeersConfig:
        if (self.static is None) == (self.kubernetes is None):
            raise ValueError("peers needs exactly one of 'static' or 'kubernetes'")
        self.discovery()  # URLs well-formed, no duplicates
        if self.self_url is not None:
            _HTTP_URL.validate_python(self.self_url)
        elif self.static is not None:
            raise ValueError("peers.self is required with peers.static (this replica's URL)")
        return self

    def discovery(self) -> EndpointsConfig:
        """The replicas as an endpoint source description (``shoal.router.discovery.make_source``)."""
        return EndpointsConfig(static=self.static, kubernetes=self.kubernetes)


# --------------------------------------------------------------------------- root


class RouterConfig(_Strict):
    """Everything one router process needs."""

    listen: ListenConfig = Field(default_factory=lambda: ListenConfig())
    """Bind address."""
    pools: list[PoolConfig] = Field(min_length=1)
    """Engine pools; each model name or alias belongs to exactly one pool or route."""
    routes: list[RouteConfig] = Field(default_factory=list)
    """Client-facing names mapped to pools (a pool's own models/aliases route to it without one)."""
    picking: PickingConfig = Field(default_factory=lambda: PickingConfig())
    """Default endpoint picking for pools without their own."""
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig())
    """API keys."""
    rate_limits: RateLimitsConfig = Field(default_factory=lambda: RateLimitsConfig())
    """Per-key token buckets."""
    timeouts: TimeoutsConfig = Field(default_factory=lambda: TimeoutsConfig())
    """Upstream timeouts."""
    retries: RetryConfig = Field(default_factory=lambda: RetryConfig())
    """Retry policy."""
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=lambda: CircuitBreakerConfig())
    """Ejection of failing endpoints."""
    health: HealthConfig = Field(default_factory=lambda: HealthConfig())
    """Endpoint polling."""
    limits: LimitsConfig = Field(default_factory=lambda: LimitsConfig())
    """Body size and connection pool."""
    programs: ProgramsConfig = Field(default_factory=lambda: ProgramsConfig())
    """Agent-program scheduling and program classes."""
    peers: PeersConfig | None = None
    """Other replicas of this router, for program ownership; None: a single replica."""
    upstream: UpstreamConfig = Field(default_factory=lambda: UpstreamConfig())
    """The router's credential towards engines."""
    tenancy: TenancyConfig = Field(default_factory=lambda: TenancyConfig())
    """Tenant identity and prefix-cache sharing."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Router log level. Request bodies and API keys are never logged."""

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
        if self.circuit_breaker.max_eject_s < self.circuit_breaker.eject_s:
            raise ValueError("circuitBreaker.maxEjectS must be >= ejectS")
        for key, limit in self.rate_limits.per_key.items():
            if not key:
                raise ValueError(f"empty key name in rateLimits.perKey ({limit})")
        return self

    def picking_for(self, pool: PoolConfig) -> PickingConfig:
        """The picking settings in force for ``pool``."""
        return pool.picking or self.picking

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON schema of ``router.yaml`` (camelCase keys), for the Router CRD and validation."""
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

