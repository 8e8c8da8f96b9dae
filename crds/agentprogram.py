"""AgentProgram: a class of multi-turn agent workflows the router schedules as a whole."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from shoal.crds.cel import CelRule
from shoal.crds.common import DNS_LABEL, ApiModel, Condition, Reason, ResourceRequirements, spec_error
from shoal.crds.quantity import quantity_bytes

BYTE_RESOURCES = ("memory", "ephemeral-storage")
"""Sandbox resources that are byte counts (the router also enforces them: RLIMIT_AS, work directory size)."""


class ProgramLimits(ApiModel):
    """Bounds on the programs of this class."""

    max_concurrent_programs: Annotated[int, Field(ge=1, le=100_000)] = 8
    """Programs of this class admitted at once; more wait in the queue."""
    max_context_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    """Most tokens one program may keep in context (empty: the model's limit)."""
    lease_seconds: Annotated[int, Field(ge=1, le=86_400)] = 600
    """A program idle longer than this is released (its KV and sandbox freed)."""


class SandboxTemplate(ApiModel):
    """The environment the program's tools run in (one sandbox per program)."""

    image: Annotated[str, Field(min_length=1)] | None = None
    """Container image (Kubernetes backend)."""
    command: list[Annotated[str, Field(min_length=1)]] | None = None
    """Command of a local sandbox process (local backend)."""
    resources: ResourceRequirements | None = None
    """Resources of one sandbox: the pod's requests/limits (image); limits.memory also bounds each
    tool's address space and limits.ephemeral-storage the work directory."""
    network: Literal["none", "egress"] = "none"
    """none (no network) or egress (outbound only)."""
    warm_pool_size: Annotated[int, Field(ge=0, le=1000)] = 0
    """Sandboxes kept started ahead of demand."""
    ttl_seconds: Annotated[int, Field(ge=1, le=86_400)] = 600
    """A sandbox is removed this long after its program ends."""

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "has(self.image) != (has(self.command) && size(self.command) > 0)",
            "set exactly one of image or command",
            Reason.SANDBOX_INVALID,
        ),
    )

    @model_validator(mode="after")
    def _one_backend(self) -> SandboxTemplate:
        if (self.image is None) == (not self.command):
            raise spec_error(Reason.SANDBOX_INVALID, "set exactly one of image or command")
        for section in ("requests", "limits"):
            for name in BYTE_RESOURCES:
                value = (getattr(self.resources, section) or {}).get(name) if self.resources else None
                if value is None:
                    continue
                try:
                    size = quantity_bytes(value)
                except ValueError as exc:
                    raise spec_error(Reason.RESOURCES_INVALID, f"resources.{section}.{name}: {exc}") from None
                if size < 1 << 20:
                    raise spec_error(Reason.RESOURCES_INVALID, f"resources.{section}.{name}: at least 1Mi")
        return self

    def limit_bytes(self, name: str) -> int | None:
        """A byte-valued limit (memory, ephemeral-storage), or None when unset."""
        value = ((self.resources.limits if self.resources else None) or {}).get(name)
        return None if value is None else quantity_bytes(value)


class Tool(ApiModel):
    """A tool the program's model may call; it runs inside the program's sandbox."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]
    """Function name shown to the model."""
    description: str = ""
    """What the tool does (shown to the model)."""
    command: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    """Command run in the sandbox; the call's JSON arguments arrive on stdin."""
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60
    """Wall-clock limit of one call; the tool's whole process group is killed past it."""
    max_output_bytes: Annotated[int, Field(ge=256, le=16 << 20)] = 65_536
    """stdout and stderr are each truncated to this many bytes (the result says so)."""


class AgentProgramSpec(ApiModel):
    """Desired state of an AgentProgram."""

    router: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
    """Router (same namespace) that schedules these programs."""
    model: Annotated[str, Field(min_length=1)]
    """Served model name the programs use (served by one of the router's pools)."""
    priority: Annotated[int, Field(ge=0, le=100)] = 50
    """Admission priority; higher is admitted first."""
    limits: Annotated[ProgramLimits, Field(json_schema_extra={"default": {}})] = ProgramLimits()
    """Concurrency, context and lease limits."""
    sandbox: SandboxTemplate | None = None
    """Tool environment; empty runs no sandbox (tools are then not allowed)."""
    tools: Annotated[
        list[Tool] | None,
        # The API server keeps the names unique (a list keyed by name).
        Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
    ] = None
    """Tools available to the programs (names unique)."""

    CEL_RULES: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "!has(self.tools) || size(self.tools) == 0 || has(self.sandbox)",
            "tools need a sandbox to run in",
            Reason.SANDBOX_INVALID,
            ".tools",
        ),
    )

    @model_validator(mode="after")
    def _tools_need_sandbox(self) -> AgentProgramSpec:
        names = [t.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise spec_error(Reason.SPEC_INVALID, "tools: names must be unique")
        if names and self.sandbox is None:
            raise spec_error(Reason.SANDBOX_INVALID, "tools need a sandbox to run in")
        return self


class AgentProgramStatus(ApiModel):
    """Observed state of an AgentProgram (the counts are what its router reports)."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation the operator last acted on."""
    active_programs: Annotated[int, Field(ge=0)] | None = None
    """Programs of this class admitted and running."""
    paused_programs: Annotated[int, Field(ge=0)] | None = None
    """Programs paused under KV pressure."""
    queued_programs: Annotated[int, Field(ge=0)] | None = None
    """Programs waiting for admission."""
    steps_per_minute: Annotated[float, Field(ge=0)] | None = None
    """LLM calls (steps) of this class per minute, recently."""
    last_report_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    """When the router last reported on this class (RFC 3339)."""
    conditions: list[Condition] | None = None
    """Ready (the router has loaded the class), Progressing and Degraded."""


class AgentProgram(ApiModel):
    """A class of agent workflows: which router and model, priority, limits, sandbox and tools."""

    api_version: Literal["shoal.dev/v1alpha1"] = "shoal.dev/v1alpha1"
    kind: Literal["AgentProgram"] = "AgentProgram"
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: AgentProgramSpec
    status: AgentProgramStatus | None = None
