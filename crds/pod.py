"""Pod-level settings a ModelPool passes through to its engine pods (env, annotations, scheduling)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator

from shoal.crds.cel import CelRule
from shoal.crds.common import ApiModel, Reason, SecretKeyRef, spec_error

RESERVED_ENV_PREFIX = "SHOAL_"
"""Environment names the operator sets itself (the engine's API key): refused in spec.pod.env."""
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MAX_ENV = 64


class EnvVar(ApiModel):
    """One environment variable of the engine container: a value or a key of a Secret."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
    """Variable name (names starting with SHOAL_ are the operator's)."""
    value: Annotated[str, Field(max_length=32768)] | None = None
    """Literal value."""
    secret_key_ref: SecretKeyRef | None = None
    """Take the value from a key of a Secret in the pool's namespace (the kubelet reads it; the
    operator never does)."""

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule("has(self.value) != has(self.secretKeyRef)", "set exactly one of value or secretKeyRef", Reason.SPEC_INVALID),
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if (self.value is None) == (self.secret_key_ref is None):
            raise spec_error(Reason.SPEC_INVALID, "set exactly one of value or secretKeyRef")
        return self


class LocalObjectReference(ApiModel):
    """A named object in the pool's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
    """Object name."""


class PodSettings(ApiModel):
    """Passed through to every engine pod."""

    env: Annotated[
        list[EnvVar] | None,
        # The API server keeps the names unique (a list keyed by name).
        Field(max_length=MAX_ENV, json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
    ] = None
    """Extra environment of the engine container (e.g. HF_TOKEN from a Secret); names unique."""
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] | None = None
    """Pod annotations (Shoal's prometheus.io/* scrape annotations take precedence)."""
    affinity: dict[str, Any] | None = None
    """The pods' affinity, as in a Pod spec (nodeAffinity, podAffinity, podAntiAffinity); the API
    server validates it when the operator writes the Deployment."""
    priority_class_name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)] | None = None
    """PriorityClass of the pods."""

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            f"!has(self.env) || self.env.all(e, !e.name.startsWith('{RESERVED_ENV_PREFIX}'))",
            f"env: names starting with {RESERVED_ENV_PREFIX} are set by the operator",
            Reason.SPEC_INVALID,
            ".env",
        ),
    )

    @model_validator(mode="after")
    def _names(self) -> PodSettings:
        names = [e.name for e in self.env or []]
        if len(set(names)) != len(names):
            raise spec_error(Reason.SPEC_INVALID, "env: names must be unique")
        if any(name.startswith(RESERVED_ENV_PREFIX) for name in names):
            raise spec_error(Reason.SPEC_INVALID, f"env: names starting with {RESERVED_ENV_PREFIX} are set by the operator")
        return self
