"""Started sandboxes waiting for programs: ``warmPoolSize`` per class, refilled as they are taken.

A program's first tool call then finds its environment prepared. Warm sandboxes of a class
whose sandbox spec changes (or that disappears) are removed: they were prepared for the old one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.backend import Sandbox, SandboxError
from shoal.router.sandboxes.spec import SandboxSpec

log = logging.getLogger("shoal.router.sandboxes")


class WarmPool:
    """The manager's warm sandboxes. ``create`` prepares one (under the preparation cap),
    ``destroy`` removes one, ``room`` says how many more sandboxes the router may hold,
    ``spawn`` runs a coroutine in the background."""

    def __init__(
        self,
        check: Callable[[ProgramClassConfig], None],
        create: Callable[[ProgramClassConfig], Awaitable[Sandbox]],
        destroy: Callable[[Sandbox, str], Coroutine[Any, Any, None]],
        room: Callable[[], int],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._check, self._create, self._destroy = check, create, destroy
        self._room, self._spawn = room, spawn
        self.classes: dict[str, ProgramClassConfig] = {}
        self._ready: dict[str, list[Sandbox]] = {}
        self._specs: dict[str, SandboxSpec] = {}
        self._filling: dict[str, int] = {}

    def ready(self) -> int:
        """Warm sandboxes ready now."""
        return sum(len(v) for v in self._ready.values())

    def held(self) -> int:
        """Warm sandboxes ready or being prepared."""
        return self.ready() + sum(self._filling.values())

    def ids(self) -> set[str]:
        return {sb.sandbox_id for sbs in self._ready.values() for sb in sbs}

    def has(self, class_name: str) -> bool:
        return bool(self._ready.get(class_name))

    def set_classes(self, classes: Iterable[ProgramClassConfig]) -> None:
        self.classes = {c.name: c for c in classes if c.sandbox is not None}
        for name in list(self._ready):
            cls = self.classes.get(name)
            if cls is None or cls.sandbox != self._specs.get(name):
                for sb in self._ready.pop(name):
                    self._spawn(self._destroy(sb, "class_changed"))
        self.refill_all()

    def take(self, cls: ProgramClassConfig) -> Sandbox | None:
        """A warm sandbox of the class (its replacement starts preparing), or None."""
        ready = self._ready.get(cls.name)
        if not ready:
            return None
        sandbox = ready.pop()
        self.refill(cls)
        return sandbox

    def refill_all(self) -> None:
        for cls in self.classes.values():
            self.refill(cls)

    def refill(self, cls: ProgramClassConfig) -> None:
        """Start preparations until the class's pool (ready + underway) is full."""
        current = self.classes.get(cls.name) is cls
        if cls.sandbox is None or not current:
            return
        try:
            self._check(cls)
        except SandboxError as exc:
            log.warning("no warm pool for class %s: %s", cls.name, exc)
            return
        self._specs[cls.name] = cls.sandbox
        have = len(self._ready.get(cls.name, [])) + self._filling.get(cls.name, 0)
        for _ in range(min(cls.sandbox.warm_pool_size - have, self._room())):
            self._filling[cls.name] = self._filling.get(cls.name, 0) + 1
            self._spawn(self._fill_one(cls))

    async def drain(self, reason: str) -> None:
        """Stop refilling and remove every warm sandbox (call after the fills have ended)."""
        self.classes.clear()
        for name in list(self._ready):
            for sb in self._ready.pop(name):
                await self._destroy(sb, reason)

    async def _fill_one(self, cls: ProgramClassConfig) -> None:
        try:
            sandbox = await self._create(cls)
        except SandboxError as exc:
            log.warning("warm sandbox for class %s failed: %s", cls.name, exc)
            return
        finally:
            self._filling[cls.name] -= 1
        current = self.classes.get(cls.name) is cls
        if current:
            self._ready.setdefault(cls.name, []).append(sandbox)
        else:
            await self._destroy(sandbox, "class_changed")
