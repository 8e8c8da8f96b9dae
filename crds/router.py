"""Router: the OpenAI-compatible entry point that places requests on pool replicas.

The spec *is* the router's own settings model (``shoal.router.config.RouterSettings``: its
documentation, defaults and validation) plus the Kubernetes-only fields defined here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import SkipJsonSchema

from shoal.crds.common import ApiModel, Condition, Reason, ResourceRequirements, explain, spec_error
from shoal.router.config import AuthSettings, PeerSettings, PoolSettings, RouterSettings
from shoal.router.programs.config import ProgramClassConfig, ProgramsConfig

OPERATOR_SET_PROGRAMS = frozenset({"classes", "classes_file", "forwarded_secret_env"})
"""Router ``programs`` settings the operator fills in: the classes come from AgentPrograms."""


class SecretRef(ApiModel):
    """A Secret in the router's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Secret name."""


class Auth(AuthSettings):
    """API-key authentication of clients (Authorization: Bearer KEY)."""

    api_keys_secret: SecretRef
    """Secret whose every key is one accepted API key; the key's name names the client (for rate
    limits, tenancy and priorityKeys). Mounted into the router pods and re-read when it changes."""


class ProgramScheduling(ProgramsConfig):
    """Whole-program scheduling of agent workflows (the router's ``programs`` settings). The program
    classes are the AgentPrograms that name this router; the operator renders them into a file the
    router re-reads live."""

    classes: SkipJsonSchema[list[ProgramClassConfig]] = Field(default_factory=list, exclude=True)
    classes_file: SkipJsonSchema[str | None] = Field(default=None, exclude=True)
    forwarded_secret_env: SkipJsonSchema[str | None] = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _operator_set(self) -> ProgramScheduling:
        named = sorted(to_camel(name) for name in self.model_fields_set & OPERATOR_SET_PROGRAMS)
        if named:
            raise spec_error(
                Reason.FEATURE_NOT_SUPPORTED,
                f"programs.{', programs.'.join(named)} is set by the operator: declare program classes as AgentPrograms",
            )
        return self


class ServiceSettings(ApiModel):
    """How the router is exposed."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Service type."""
    port: Annotated[int, Field(ge=1, le=65535)] = 80
    """Service port (the container listens on 8080)."""


class RouterSpec(RouterSettings):
    """Desired state of a Router: the router's own settings (``shoal.router.config.RouterSettings``,
    rendered into its router.yaml as they are) beside the Kubernetes fields."""

    pools: Annotated[list[PoolSettings], Field(min_length=1)]
    """ModelPools (same namespace) this router serves, each with its own router settings."""
    auth: Auth | None = None
    """Client authentication; empty accepts every request."""
    programs: ProgramScheduling = Field(default_factory=lambda: ProgramScheduling())
    """Agent-program scheduling settings (the AgentPrograms' classes are rendered into a separate,
    live-reloaded file)."""
    peers: PeerSettings | None = None
    """With replicas > 1: how the replicas watch each other (the operator adds their discovery)."""
    replicas: Annotated[int, Field(ge=0, le=100)] = 1
    """Router replicas (stateless; they agree by consistent hashing)."""
    image: Annotated[str, Field(min_length=1)] | None = None
    """Router image; empty uses the operator's default."""
    resources: ResourceRequirements | None = None
    """Resources of each router container."""
    service: ServiceSettings = Field(default_factory=lambda: ServiceSettings())
    """Service exposing the router."""

    @field_validator("routes", mode="wrap")
    @classmethod
    def _routes_reason(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            _, message = explain(exc, "routes")
            raise spec_error(Reason.ROUTES_INVALID, message) from None

    @model_validator(mode="after")
    def _unique_pools(self) -> RouterSpec:
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pools listed twice: {', '.join(dupes)}")
        for route in self.routes:
            targets = [route.pool] if route.pool else [t.pool for t in route.split or []]
            unknown = sorted({t for t in [*targets, *(r.pool for r in route.rules)] if t not in names})
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
