"""What the scheduler tells its caller to do. Frozen values; the caller acts on them in order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Admit:
    """Send this call now, to one of ``engines`` (None: any engine the picker likes)."""

    call_id: str
    program_id: str
    tenant: str
    engines: frozenset[str] | None
    retention_s: float
    """Ask the engine to pin the call's blocks this long after it ends (0: no pin)."""
    priority: int
    """The class priority, sent as ``x-shoal-priority`` (higher first)."""
    resumed: bool = False
    """The program was paused and resumes with this call."""
    forced: bool = False
    """Admitted by the aging bound, whatever the pressure."""


@dataclass(frozen=True)
class Wait:
    """Hold this call; a later ``Admit`` or ``Reject`` with the same ``call_id`` ends the wait."""

    call_id: str
    program_id: str
    tenant: str


@dataclass(frozen=True)
class Reject:
    """A held call will not run (its program was released or terminated)."""

    call_id: str
    program_id: str
    tenant: str
    reason: str


@dataclass(frozen=True)
class Pause:
    """The program leaves ``engine`` under KV pressure: drop its pin there."""

    program_id: str
    tenant: str
    engine: str


@dataclass(frozen=True)
class Resume:
    """A paused program between calls gets room on ``engine`` again (KV pressure passed): its
    next call is admitted at once. Nothing to do on the engine (its blocks were never pinned
    while paused); the pause ends here."""

    program_id: str
    tenant: str
    engine: str


@dataclass(frozen=True)
class Unpin:
    """Drop the program's pin on ``engine``: its tools are not expected back soon enough."""

    program_id: str
    tenant: str
    engine: str


@dataclass(frozen=True)
class Terminate:
    """The program is gone (``reason``: release, lease): drop its pin, free its sandbox."""

    program_id: str
    tenant: str
    engine: str | None
    reason: str


@dataclass(frozen=True)
class Prewarm:
    """The program nears the head of the queue: prepare its sandbox now."""

    program_id: str
    tenant: str
    class_name: str


Decision = Admit | Wait | Reject | Pause | Resume | Unpin | Terminate | Prewarm
