"""One program's sandbox as the manager tracks it: from the start of its preparation to its
removal, with its state and the ledger ``GET /v1/programs/{id}`` shows."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.backend import Sandbox, Usage


@dataclass(eq=False)
class SandboxEntry:
    """One program's sandbox, from the start of its preparation to its removal."""

    program_id: str
    cls: ProgramClassConfig
    created: float
    last_activity: float
    task: asyncio.Task[Sandbox] | None = None
    started: bool = False
    """Its preparation holds a slot (or bypassed the cap): it can no longer be cancelled."""
    kind: str = "cold"
    """How its first call found it: ``warm`` (pool), ``prewarmed`` (preparation began before
    the first call), ``cold``."""
    prepare_s: float | None = None
    """Seconds its creation and preparation took (0 from the warm pool), waits for a slot excluded."""
    first_wait_s: float | None = None
    busy: int = 0
    tool_calls: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    over_disk: int | None = None
    usage: Usage = field(default_factory=lambda: Usage(0, 0, 0))

    def ready(self) -> Sandbox | None:
        """The sandbox once its preparation succeeded; None while preparing or after a failure."""
        task = self.task
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    def state(self) -> str:
        """``preparing``, ``busy`` (a tool call runs) or ``idle``."""
        if self.task is None or not self.task.done():
            return "preparing"
        return "busy" if self.busy else "idle"

    def ledger(self, backend: str, now: float) -> dict[str, object]:
        """What the program holds (usage as of its latest call or ledger read)."""
        sandbox = self.ready()
        return {
            "program_id": self.program_id,
            "program_class": self.cls.name,
            "backend": backend,
            "state": self.state(),
            "sandboxes": 1 if sandbox is not None else 0,
            "sandbox_id": sandbox.sandbox_id if sandbox else None,
            "processes": self.usage.processes,
            "ports": self.usage.ports,
            "disk_bytes": self.usage.disk_bytes,
            "tool_calls": self.tool_calls,
            "start": self.kind if self.first_wait_s is not None else None,
            "prepare_s": self.prepare_s,
            "first_call_wait_s": self.first_wait_s,
            "idle_s": now - self.last_activity,
        }
