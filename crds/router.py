"""Router: the OpenAI-compatible entry point that places requests on pool replicas."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from shoal.crds.common import (
    DNS_LABEL,
    ApiModel,
    Condition,
    Reason,
    ResourceRequirements,
    spec_error,
)

PoolName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]


PLUGIN_TYPE = r"^[a-z][a-z0-9-]*$"


class PoolRef(ApiModel):
    """A ModelPool (same namespace) this router serves."""

    name: PoolName
    """ModelPool name."""
    aliases: list[Annotated[str, Field(min_length=1)]] | None = None
    """Extra model names clients may ask for; forwarded as the pool's servedModelName."""


class SplitTarget(ApiModel):
    """One pool of a weighted split."""

    pool: PoolName
    """Target pool (one of spec.pools)."""
    weight: Annotated[float, Field(gt=0, le=1_000_000)]
    """Relative share of requests."""


class RouteRule(ApiModel):
    """Sends a request to ``pool`` when its prompt matches; keywords and regex are OR-ed."""

    keywords: list[Annotated[str, Field(min_length=1)]] | None = None
    """Case-insensitive substrings of the prompt."""
    regex: Annotated[str, Field(min_length=1)] | None = None
    """A Python regular expression searched in the prompt."""
    pool: PoolName
    """Pool for matching requests (one of spec.pools)."""


class Route(ApiModel):
    """Maps a client-facing model name to pools: rules first (first match wins), then ``pool`` or ``split``."""

    model: Annotated[str, Field(min_length=1)]
    """Model name clients send."""
    aliases: list[Annotated[str, Field(min_length=1)]] | None = None
    """Other names for this route."""
    pool: PoolName | None = None
    """Default target pool (one of spec.pools)."""
    split: list[SplitTarget] | None = None
    """Weighted split across pools (sticky per program/session)."""
    rules: list[RouteRule] | None = None
    """Prompt-content rules tried before the default target."""

    @model_validator(mode="after")
    def _one_target(self) -> Route:
        if (self.pool is None) == (not self.split):
            raise spec_error(Reason.ROUTES_INVALID, f"route for model {self.model!r}: set exactly one of pool or split")
        return self

    def targets(self) -> list[str]:
        """Every pool this route may send to."""
        pools = [self.pool] if self.pool else [t.pool for t in self.split or []]
        return pools + [r.pool for r in self.rules or []]


class Plugin(ApiModel):
    """An endpoint-picking plugin: a type registered in the router, its weight and parameters."""

    type: Annotated[str, Field(pattern=PLUGIN_TYPE, max_length=63)]
    """Registered plugin name, e.g. healthy, prefix-affinity, queue-depth, kv-usage, max-score."""
    weight: Annotated[float, Field(ge=0, le=1000)] = 1.0
    """Scorers only: multiplier of the plugin's [0, 1] score."""
    params: Annotated[dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})] | None = (
        None
    )
    """Plugin-specific parameters (checked by the router's plugin)."""


class Picking(ApiModel):
    """Endpoint picking within a pool: filters narrow the replicas, weighted scorers rank them, a picker chooses."""

    filters: list[Plugin] | None = None
    """Applied in order; empty uses the router's defaults."""
    scorers: list[Plugin] | None = None
    """Weighted scorers; empty uses the router's defaults."""
    picker: Plugin | None = None
    """The picker; empty uses max-score."""
    prefix_mode: Literal["approximate", "precise"] = "approximate"
    """Prefix affinity from what the router sent (approximate) or from each engine's KV digest (precise)."""


class SecretRef(ApiModel):
    """A Secret in the router's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Secret name."""


class Auth(ApiModel):
    """API-key authentication of clients (Authorization: Bearer KEY)."""

    api_keys_secret: SecretRef
    """Secret whose every key is one accepted API key; the key's name names the client (for rate limits)."""


class RateLimit(ApiModel):
    """A token bucket: each request takes one request token and, if set, its estimated LLM tokens."""

    requests_per_second: Annotated[float, Field(gt=0)]
    """Sustained request rate."""
    burst: Annotated[int, Field(ge=1)]
    """Bucket size in requests."""
    tokens_per_second: Annotated[float, Field(gt=0)] | None = None
    """Sustained LLM-token rate; empty is unlimited."""
    token_burst: Annotated[int, Field(ge=1)] | None = None
    """Token bucket size; empty is 10 x tokensPerSecond."""


class RateLimits(ApiModel):
    """Per-API-key rate limits (per client address without auth); over the limit answers 429."""

    default: RateLimit | None = None
    """Applies to every client without its own entry; empty is unlimited."""
    per_key: dict[str, RateLimit] | None = None
    """Limits by API-key name (the Secret key's name)."""


class ProgramScheduling(ApiModel):
    """Whole-program scheduling of agent workflows (AgentProgram resources name this router).

    Rendered into the router's ``programs`` settings; the defaults are the router's own.
    """

    enabled: bool | None = None
    """Programs are always scheduled: false is not supported (the Router is Degraded with
    FeatureNotSupported); leave it empty."""
    kv_high_watermark: Annotated[float, Field(gt=0, le=1)] = 0.9
    """Fraction of an engine's KV blocks the programs' working set may reach before programs
    there are paused (and new ones wait)."""
    kv_low_watermark: Annotated[float, Field(gt=0, le=1)] = 0.75
    """Pausing stops, and resuming starts, below this fraction (the hysteresis band)."""
    tick_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5
    """Timer for decisions between events (leases, aging, capacity changes)."""
    max_wait_seconds: Annotated[float, Field(gt=0, le=86_400)] = 120.0
    """Aging bound: a queued or paused program is admitted once it has waited this long."""
    retention_max_seconds: Annotated[float, Field(ge=0, le=86_400)] = 300.0
    """Longest KV retention the router asks an engine for after a turn."""
    retention_default_seconds: Annotated[float, Field(ge=0, le=86_400)] = 2.0
    """Retention after a turn while too few tool durations have been observed to learn one."""
    retention_break_even_seconds: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    """What one avoided re-prefill is worth in seconds of holding a program's KV: the learned
    retention maximizes P(tool back within it) x this - expected seconds held."""
    prewarm_queue_depth: Annotated[int, Field(ge=0, le=1000)] = 2
    """Queued programs nearest the head whose sandboxes are prepared ahead (0: none)."""
    count_foreign_load: bool | None = None
    """Also leave room for KV the engines report in use that this router's programs do not
    explain (other replicas' programs, one-off requests). Unset: on with several replicas."""
    reload_interval_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    """How often the router checks its AgentProgram classes file for changes."""
    default_lease_seconds: Annotated[int, Field(ge=1, le=86400)] | None = None
    """Not supported: a program's lease comes from its AgentProgram's limits.leaseSeconds;
    setting it makes the Router Degraded (FeatureNotSupported)."""

    @model_validator(mode="after")
    def _watermarks(self) -> ProgramScheduling:
        if self.enabled is False:
            raise spec_error(Reason.FEATURE_NOT_SUPPORTED, "programs.enabled: false is not supported")
        if self.default_lease_seconds is not None:
            raise spec_error(
                Reason.FEATURE_NOT_SUPPORTED,
                "programs.defaultLeaseSeconds is not supported: set limits.leaseSeconds on the AgentProgram",
            )
        if self.kv_low_watermark > self.kv_high_watermark:
            raise ValueError("programs.kvLowWatermark must not exceed kvHighWatermark")
        return self


class ServiceSettings(ApiModel):
    """How the router is exposed."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Service type."""
    port: Annotated[int, Field(ge=1, le=65535)] = 80
    """Service port (the container listens on 8080)."""


class RouterSpec(ApiModel):
    """Desired state of a Router."""

    pools: Annotated[list[PoolRef], Field(min_length=1)]
    """ModelPools (same namespace) this router serves."""
    routes: list[Route] | None = None
    """Client-facing model names mapped to pools; without a route a request goes to the pool whose
    servedModelName (or alias) it names."""
    picking: Annotated[Picking, Field(json_schema_extra={"default": {}})] = Picking()
    """Endpoint picking within a pool."""
    auth: Auth | None = None
    """Client authentication; empty accepts every request."""
    rate_limits: RateLimits | None = None
    """Client rate limits; empty means unlimited."""
    programs: Annotated[ProgramScheduling, Field(json_schema_extra={"default": {}})] = ProgramScheduling()
    """Agent-program scheduling settings (router.yaml ``programs``; the AgentPrograms' classes are
    rendered into a separate, live-reloaded file)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Router log level (request bodies and API keys are never logged)."""
    replicas: Annotated[int, Field(ge=0, le=100)] = 1
    """Router replicas (stateless; they agree by consistent hashing)."""
    image: Annotated[str, Field(min_length=1)] | None = None
    """Router image; empty uses the operator's default."""
    resources: ResourceRequirements | None = None
    """Resources of each router container."""
    service: Annotated[ServiceSettings, Field(json_schema_extra={"default": {}})] = ServiceSettings()
    """Service exposing the router."""

    @model_validator(mode="after")
    def _unique_pools(self) -> RouterSpec:
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pools listed twice: {', '.join(dupes)}")
        for route in self.routes or []:
            unknown = sorted({t for t in route.targets() if t not in names})
            if unknown:
                raise spec_error(
                    Reason.ROUTES_INVALID,
                    f"route for model {route.model!r} targets {', '.join(unknown)}, not in spec.pools",
                )
        return self


class PoolEndpoints(ApiModel):
    """Endpoints the router sees for one pool."""

    name: str
    """ModelPool name."""
    model: str | None = None
    """Served model name."""
    ready_endpoints: Annotated[int, Field(ge=0)] = 0
    """Ready replicas of the pool."""


class RouterStatus(ApiModel):
    """Observed state of a Router."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation the operator last acted on."""
    replicas: Annotated[int, Field(ge=0)] | None = None
    """Router replicas that exist."""
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    """Router replicas passing their readiness probe."""
    config_hash: str | None = None
    """Hash of the rendered router configuration (changes roll the router pods)."""
    endpoint: str | None = None
    """Base URL of the router's OpenAI API."""
    pools: list[PoolEndpoints] | None = None
    """Per-pool endpoint counts."""
    conditions: list[Condition] | None = None
    """Ready, Progressing and Degraded."""


class Router(ApiModel):
    """An OpenAI-compatible router over ModelPools: auth, rate limits, routing, endpoint picking, programs."""

    api_version: Literal["shoal.dev/v1alpha1"] = "shoal.dev/v1alpha1"
    kind: Literal["Router"] = "Router"
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: RouterSpec
    status: RouterStatus | None = None
