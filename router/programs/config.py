"""Program scheduling settings (``programs:`` in ``router.yaml``) and program classes.

A program class is what an ``AgentProgram`` resource declares; the operator renders every
AgentProgram of a Router into ``classesFile``, which the router re-reads while running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from shoal.router.config_base import StrictModel
from shoal.router.sandboxes.spec import SandboxSpec, ToolSpec

CLASS_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class OwnerRef(StrictModel):
    """The Kubernetes object that owns this class's sandboxes (the AgentProgram)."""

    api_version: str = "shoal.dev/v1alpha1"
    kind: str = "AgentProgram"
    name: str = Field(min_length=1)
    uid: str = Field(min_length=1)
    namespace: str = "default"


class ProgramClassConfig(StrictModel):
    """A class of agent programs: model, priority, limits, sandbox and tools."""

    name: str = Field(pattern=CLASS_NAME, max_length=63)
    """Class name (the AgentProgram's name); requests name it in ``X-Shoal-Program-Class``
    or ``program_class``."""
    model: str = Field(min_length=1)
    """Model name the programs use; the first class of a model is that model's default."""
    priority: int = Field(default=50, ge=0, le=100)
    """Admission priority; higher is admitted (and resumed) first."""
    max_concurrent_programs: int = Field(default=8, ge=1, le=100_000)
    """Programs of this class admitted at once; more wait in the queue."""
    max_context_tokens: int | None = Field(default=None, ge=1)
    """Most tokens one program may hold in context; a call past it gets 400."""
    lease_seconds: float = Field(default=600.0, gt=0, le=86_400)
    """A program with no call or tool activity for this long is terminated (pins and sandbox freed)."""
    sandbox: SandboxSpec | None = None
    """Tool environment; None: the class has no tools."""
    tools: list[ToolSpec] = Field(default_factory=list)
    """Tools the programs may run through ``POST /v1/programs/{id}/tools/{name}``."""
    owner: OwnerRef | None = None
    """Kubernetes owner of the sandboxes (set by the operator)."""
    tenants: list[str] | None = None
    """API key names (tenants) that may run programs of this class; None: every tenant.
    Others naming it get 403, and it is never their model's default class (a class's
    priority is only for the tenants it is meant for)."""

    def allows(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    @model_validator(mode="after")
    def _tools(self) -> ProgramClassConfig:
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"class {self.name}: tool names must be unique")
        if names and self.sandbox is None:
            raise ValueError(f"class {self.name}: tools need a sandbox")
        return self

    def tool(self, name: str) -> ToolSpec | None:
        return next((t for t in self.tools if t.name == name), None)


class ProgramClassesFile(StrictModel):
    """The live-reloaded file of classes (``classesFile``)."""

    classes: list[ProgramClassConfig] = Field(default_factory=list)


class ProgramsConfig(StrictModel):
    """Agent-program scheduling: admission, pause/resume under KV pressure, retention, leases."""

    classes: list[ProgramClassConfig] = Field(default_factory=list)
    """Classes declared inline (``shoal up``, hand-written configs)."""
    classes_file: str | None = None
    """A YAML/JSON file ``{classes: [...]}`` re-read when it changes (the operator renders
    every AgentProgram of this Router into it); its classes join the inline ones."""
    reload_interval_s: float = Field(default=2.0, gt=0)
    """How often ``classesFile`` is checked for changes."""
    high_watermark: float = Field(default=0.95, gt=0, le=1)
    """Fraction of an engine's KV blocks the programs' working set may reach before the
    scheduler pauses programs there."""
    low_watermark: float = Field(default=0.85, gt=0, le=1)
    """Pausing stops (and resuming starts) below this fraction: the hysteresis band. Unset
    while ``highWatermark`` is set: 0.10 below it."""
    tick_s: float = Field(default=0.5, gt=0, le=60)
    """Timer for decisions between events (leases, aging, capacity changes)."""
    max_wait_s: float = Field(default=120.0, gt=0)
    """Aging bound: a queued or paused program is admitted once it has waited this long,
    whatever the pressure."""
    retention_max_s: float = Field(default=300.0, ge=0)
    """Longest KV retention the router asks an engine for after a turn."""
    retention_default_s: float = Field(default=2.0, ge=0)
    """Retention after a turn while too few tool durations have been observed to learn one."""
    retention_break_even_s: float = Field(default=30.0, gt=0)
    """What one avoided re-prefill is worth in seconds of holding the context's KV: the
    learned TTL maximizes P(tool back within TTL) x this - expected seconds held."""
    prewarm_queue_depth: int = Field(default=2, ge=0, le=1000)
    """Queued programs nearest the head whose sandboxes are prepared ahead (0: none)."""
    count_foreign_load: bool | None = None
    """Also leave room for KV the engines report in use that this router's programs do not
    explain (other router replicas' programs, one-off requests), from each scrape. Unset: on
    when ``peers`` is configured (each replica accounts only the programs it owns)."""
    forwarded_secret_env: str | None = None
    """Several router replicas: env var holding the secret replicas use to forward program
    calls to the replica that owns the program."""

    @model_validator(mode="before")
    @classmethod
    def _low_follows_high(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "lowWatermark" in data or "low_watermark" in data:
            return data
        high = data.get("highWatermark", data.get("high_watermark"))
        if isinstance(high, int | float) and not isinstance(high, bool):
            return {**data, "lowWatermark": max(high - 0.10, high / 2)}
        return data

    @model_validator(mode="after")
    def _check(self) -> ProgramsConfig:
        if self.low_watermark > self.high_watermark:
            raise ValueError("programs.lowWatermark must be <= highWatermark")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("programs.classes: names must be unique")
        return self


def load_classes_file(path: str | Path) -> list[ProgramClassConfig]:
    """Read ``classesFile``; raises ValueError naming the problem."""
    import yaml

    text = Path(path).read_text()
    data: Any = yaml.safe_load(text) if text.strip() else {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'classes'")
    return list(ProgramClassesFile.model_validate(data).classes)
