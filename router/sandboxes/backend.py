"""What every sandbox backend offers the manager, and the values they exchange.

Backend methods block (processes, Kubernetes API calls); the manager calls them in threads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.spec import ToolSpec


class SandboxError(Exception):
    """A sandbox could not be created or used (the message says why, without internals)."""


class SandboxUnavailable(SandboxError):
    """This backend cannot run the class as configured (e.g. ``network: none`` without namespaces)."""


@dataclass(frozen=True)
class Sandbox:
    """One started sandbox: a private directory (local) or a pod (Kubernetes)."""

    sandbox_id: str
    class_name: str
    program_id: str | None
    """None while it waits in the warm pool."""
    location: str
    """Local: the work directory; Kubernetes: the pod name."""
    uid: int | None = None
    """Local, as root: the uid the sandbox's processes run as (owned by nobody else)."""
    created_at: float = 0.0
    """Wall-clock seconds (``time.time()``) when it was created."""


@dataclass(frozen=True)
class Usage:
    """What a sandbox holds right now (the ledger's per-sandbox figures)."""

    processes: int
    ports: int
    """Listening TCP sockets of its processes."""
    disk_bytes: int


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call. A failing tool is a result (exit code), not an error."""

    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    exit_code: int | None
    """The process's exit status; ``-N`` when killed by signal N; None if it never started."""
    duration_s: float
    timed_out: bool

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ToolCall:
    """One tool run: the tool, its stdin and the effective limits of this call."""

    tool: ToolSpec
    stdin: bytes
    timeout_s: float
    max_output_bytes: int


class SandboxBackend(Protocol):
    """One kind of sandbox (local processes, Kubernetes pods)."""

    name: str

    def check(self, cls: ProgramClassConfig) -> None:
        """Raise SandboxUnavailable when this backend cannot run ``cls`` safely as declared."""
        ...

    def create(self, sandbox_id: str, cls: ProgramClassConfig, program_id: str | None) -> Sandbox:
        """Start and prepare a sandbox (blocking); raises SandboxError; leaves nothing behind on failure."""
        ...

    def assign(self, sandbox: Sandbox, program_id: str) -> Sandbox:
        """Hand a warm-pool sandbox to a program (its record/labels name the program)."""
        ...

    def run(self, sandbox: Sandbox, cls: ProgramClassConfig, call: ToolCall) -> ToolResult:
        """Run one tool call to completion or timeout; nothing it started outlives it."""
        ...

    def usage(self, sandbox: Sandbox) -> Usage:
        """Processes, listening ports and disk bytes the sandbox holds now."""
        ...

    def destroy(self, sandbox: Sandbox) -> None:
        """Remove everything of the sandbox (idempotent)."""
        ...

    def list_existing(self) -> list[Sandbox]:
        """Every sandbox of this router the backend can find (records / labels): orphans after a restart."""
        ...
