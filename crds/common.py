"""Types shared by the Shoal custom resources: the API group, conditions, resources."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from shoal.crds.quantity import QUANTITY_MAX_LENGTH, QUANTITY_PATTERN, check_quantity

GROUP = "shoal.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A Kubernetes object name usable as a Service name (RFC 1123 label)."""


class ApiModel(BaseModel):
    """Base of every CRD model: camelCase on the wire, field docstrings become descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
    )


class ConditionType(StrEnum):
    """The three condition types every Shoal resource reports."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    """Every reason the operator writes into a condition (one vocabulary for all kinds)."""

    # Healthy / progress.
    AVAILABLE = "Available"
    AS_EXPECTED = "AsExpected"
    RECONCILING = "Reconciling"
    ROLLING_OUT = "RollingOut"
    ROLLOUT_COMPLETE = "RolloutComplete"
    WAITING_FOR_REPLICAS = "WaitingForReplicas"
    SCALED_TO_ZERO = "ScaledToZero"
    # Runtime trouble.
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    ROLLOUT_STALLED = "RolloutStalled"
    CHILD_MISSING = "ChildMissing"
    CHILD_REJECTED = "ChildRejected"
    """The API server refused a child (e.g. 422 Invalid, 403 Forbidden); retried with backoff."""
    # Invalid specs (never retried until the spec changes).
    SPEC_INVALID = "SpecInvalid"
    MODEL_SOURCE_INVALID = "ModelSourceInvalid"
    FEATURE_NOT_SUPPORTED = "FeatureNotSupported"
    RESOURCES_INVALID = "ResourcesInvalid"
    AUTOSCALING_INVALID = "AutoscalingInvalid"
    ROUTES_INVALID = "RoutesInvalid"
    SANDBOX_INVALID = "SandboxInvalid"
    CONFIG_INVALID = "ConfigInvalid"
    # Missing references (retried: the referenced object may appear later).
    POOL_NOT_FOUND = "PoolNotFound"
    POOL_NOT_READY = "PoolNotReady"
    ROUTER_NOT_FOUND = "RouterNotFound"
    ROUTER_NOT_READY = "RouterNotReady"
    CLASS_NOT_LOADED = "ClassNotLoaded"
    MODEL_NOT_SERVED = "ModelNotServed"
    SECRET_NOT_FOUND = "SecretNotFound"


class Condition(ApiModel):
    """One observation of the resource's state (the Kubernetes condition convention)."""

    type: ConditionType
    """Ready, Progressing or Degraded."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)]
    """A CamelCase machine-readable cause, e.g. ModelSourceInvalid or ReplicasUnavailable."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """A human-readable explanation."""
    last_transition_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation this condition was computed from."""


def _quantity(value: int | str) -> int | str:
    try:
        return check_quantity(value)
    except ValueError as exc:
        raise spec_error(Reason.RESOURCES_INVALID, str(exc)) from None


Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
            "maxLength": QUANTITY_MAX_LENGTH,
        }
    ),
]
"""A Kubernetes quantity (500m, 4, 2Gi); anything else is refused by the CRD pattern and the model."""


class ResourceRequirements(ApiModel):
    """Compute resources of one container, as in a Pod spec (cpu, memory, nvidia.com/gpu...)."""

    requests: dict[str, Quantity] | None = None
    """Minimum resources, e.g. {cpu: "4", memory: 16Gi}."""
    limits: dict[str, Quantity] | None = None
    """Maximum resources, e.g. {nvidia.com/gpu: 1}. Extended resources such as GPUs must appear here."""


class SecretKeyRef(ApiModel):
    """One key of a Secret in the resource's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")]
    """Secret name."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")] = "api-key"
    """Key in the Secret holding the value."""


class Toleration(ApiModel):
    """A Pod toleration (e.g. for GPU node taints)."""

    key: str | None = None
    """Taint key; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal."""
    value: str | None = None
    """Taint value (for Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """NoSchedule, PreferNoSchedule or NoExecute; empty matches all effects."""


def spec_error(reason: Reason, message: str) -> PydanticCustomError:
    """An error for a model validator that names its condition reason (the error's type)."""
    return PydanticCustomError(reason.value, message)


def explain(exc: ValidationError, prefix: str = "spec") -> tuple[Reason, str]:
    """The condition reason and a one-line message for the first problem of a failed validation."""
    first = exc.errors(include_url=False)[0]
    try:
        reason = Reason(first["type"])
    except ValueError:
        reason = Reason.SPEC_INVALID
    loc = ".".join([prefix, *(str(p) for p in first["loc"])])
    extra = len(exc.errors()) - 1
    more = f" (and {extra} more)" if extra else ""
    return reason, f"{loc}: {first['msg']}{more}"
