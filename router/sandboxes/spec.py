"""What a program class says about its tools' sandbox (rendered from ``AgentProgram.spec``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from shoal.router.config_base import StrictModel

TOOL_NAME = r"^[A-Za-z_][A-Za-z0-9_-]*$"


class SandboxResources(StrictModel):
    """Limits of one sandbox. Local backend: rlimits; Kubernetes backend: the pod's resources."""

    cpu_seconds: int | None = Field(default=None, ge=1)
    """CPU time one tool process may use (local: RLIMIT_CPU)."""
    memory_bytes: int | None = Field(default=None, ge=1 << 20)
    """Address space / memory limit (local: RLIMIT_AS; Kubernetes: limits.memory)."""
    max_processes: int | None = Field(default=None, ge=1)
    """Processes the sandbox user may run (local: RLIMIT_NPROC)."""
    max_open_files: int | None = Field(default=None, ge=8)
    """Open file descriptors (local: RLIMIT_NOFILE)."""
    max_file_bytes: int | None = Field(default=None, ge=1024)
    """Largest file a tool may write (local: RLIMIT_FSIZE)."""
    disk_bytes: int | None = Field(default=None, ge=1 << 20)
    """Work directory size (Kubernetes: the emptyDir sizeLimit; local: checked by the ledger)."""
    kubernetes: dict[str, dict[str, str]] | None = None
    """Kubernetes backend: the pod container's ``requests``/``limits`` as written in the AgentProgram."""


class SandboxSpec(StrictModel):
    """One sandbox per program; exactly one of ``image`` (Kubernetes) or ``command`` (local)."""

    image: str | None = Field(default=None, min_length=1)
    """Container image (Kubernetes backend)."""
    command: list[str] | None = None
    """Local backend: the command that prepares the sandbox's directory (run once, inside it)."""
    resources: SandboxResources = Field(default_factory=lambda: SandboxResources())
    """Limits of the sandbox."""
    network: Literal["none", "egress"] = "none"
    """``none``: no network at all; ``egress``: outbound only."""
    warm_pool_size: int = Field(default=0, ge=0, le=1000)
    """Sandboxes kept started ahead of demand for this class."""
    ttl_seconds: int = Field(default=600, ge=1, le=86_400)
    """A sandbox is removed this long after its program's last activity."""

    @model_validator(mode="after")
    def _one_backend(self) -> SandboxSpec:
        if (self.image is None) == (not self.command):
            raise ValueError("sandbox: set exactly one of image or command")
        if self.image is not None and self.resources.max_processes is not None:
            raise ValueError("sandbox: resources.maxProcesses applies to local (command) sandboxes; "
                             "a pod's process count is the node's podPidsLimit")
        return self


class ToolSpec(StrictModel):
    """A tool the program's model may call; it runs in the program's sandbox."""

    name: str = Field(min_length=1, max_length=64, pattern=TOOL_NAME)
    """Function name shown to the model."""
    description: str = ""
    """What the tool does."""
    command: list[str] = Field(min_length=1)
    """argv run in the sandbox; the call's JSON arguments arrive on stdin."""
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    """Wall-clock limit of one call; the whole process group is killed past it."""
    max_output_bytes: int = Field(default=65_536, ge=256, le=16 << 20)
    """stdout and stderr are each truncated to this many bytes (the result says so)."""
