"""The sandbox manager: one interface over the backends, a ledger per program, a warm pool
per class, pre-warm with a cap on concurrent preparations, and garbage collection.

A program has at most one sandbox. Its tool calls run one at a time in it. Sandboxes end
on ``release`` (program release, lease expiry, termination: the program registry calls
it), ``ttlSeconds`` after the program's last activity (a crashed client never releases),
and at start-up ``recover()`` removes whatever an earlier run of this router left.
Backend work blocks, so it runs in threads; everything else happens on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.backend import Sandbox, SandboxBackend, SandboxError, ToolCall, ToolResult, Usage
from shoal.router.sandboxes.entry import SandboxEntry
from shoal.router.sandboxes.metrics import SandboxMetrics
from shoal.router.sandboxes.settings import SandboxSettings
from shoal.router.sandboxes.warm_pool import WarmPool

log = logging.getLogger("shoal.router.sandboxes")
T = TypeVar("T")


def sandbox_key(tenant: str, program_id: str) -> str:
    """The manager's key for a tenant's program: program ids are only unique per tenant, and two
    tenants using the same id must never share a sandbox. The tenant's length makes it unambiguous."""
    return f"{len(tenant)}:{tenant}/{program_id}"


class UnknownTool(SandboxError):
    """The class has no tool of that name."""


class SandboxLimitReached(SandboxError):
    """The router holds as many sandboxes as it may (``maxSandboxes``); may clear later."""


class SandboxDiskFull(SandboxError):
    """The program's sandbox uses more disk than its class allows; it stays refused until released."""


def _retrieve(task: asyncio.Task[Sandbox]) -> None:
    """A failed pre-warm nobody awaited yet is not an unhandled error (the next call retries)."""
    if not task.cancelled():
        task.exception()


class SandboxManager:
    """Sandboxes of agent programs. ``clock`` (monotonic seconds) is injectable for tests."""

    def __init__(
        self,
        backend: SandboxBackend,
        settings: SandboxSettings | None = None,
        metrics: SandboxMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.settings = settings or SandboxSettings()
        self.metrics = metrics or SandboxMetrics()
        self.clock = clock
        self._entries: dict[str, SandboxEntry] = {}
        self._creating: set[str] = set()
        """Sandboxes being created in a thread right now (not orphans, whatever recover() finds)."""
        self.warm = WarmPool(self.backend.check, self._create_warm, self._destroy, self._room, self._spawn)
        self._slots = asyncio.Semaphore(self.settings.max_concurrent_preparations)
        self._background: set[asyncio.Task[Any]] = set()
        self._gc_task: asyncio.Task[None] | None = None
        # Tool calls hold a thread for their whole run: a pool of their own keeps long tools
        # from starving the event loop's default executor (and each other, up to workerThreads).
        self._threads = ThreadPoolExecutor(self.settings.worker_threads, thread_name_prefix="sandbox")
        self._observe()

    # lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Remove orphans of an earlier run, fill the warm pools, start the GC timer."""
        await self.recover()
        self.warm.refill_all()
        self._gc_task = asyncio.create_task(self._gc_loop(), name="sandbox-gc")

    async def stop(self) -> None:
        """Remove every sandbox (programs' and warm ones) and stop the timer."""
        if self._gc_task is not None:
            self._gc_task.cancel()
        for pid in list(self._entries):
            await self.release(pid, reason="shutdown")
        self.warm.classes.clear()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self.warm.drain("shutdown")
        self._threads.shutdown(wait=False)

    def set_classes(self, classes: Iterable[ProgramClassConfig]) -> None:
        """The current program classes: their warm pools are kept at ``warmPoolSize``; warm
        sandboxes of a changed or removed class are removed."""
        self.warm.set_classes(classes)

    # the program-facing API ------------------------------------------------------------------------

    async def prewarm(self, program_id: str, cls: ProgramClassConfig) -> None:
        """Start preparing the program's sandbox (at most ``maxConcurrentPreparations`` at once)."""
        if program_id in self._entries:
            return
        try:
            self.backend.check(cls)
            self._new_entry(program_id, cls, wait_for_slot=True).kind = "prewarmed"
        except SandboxError as exc:  # a hint, not a request: the first tool call reports the problem
            log.info("not pre-warming program %s: %s", program_id, exc)

    async def acquire(self, program_id: str, cls: ProgramClassConfig) -> Sandbox:
        """The program's sandbox, waiting only for what is left of its preparation."""
        began = self.clock()
        entry = self._entries.get(program_id)
        if entry is not None and entry.task is not None and entry.task.done() and (
            entry.task.cancelled() or entry.task.exception() is not None
        ):
            del self._entries[program_id]  # its preparation failed: this call tries again
            entry = None
        if entry is None:
            self.backend.check(cls)
            entry = self._new_entry(program_id, cls, wait_for_slot=False)
        elif not entry.started and entry.task is not None and not entry.task.done():
            entry.task.cancel()  # still queued behind the cap: the program needs it now
            entry.task = asyncio.create_task(self._prepare(entry, wait_for_slot=False))
            entry.task.add_done_callback(_retrieve)
        assert entry.task is not None
        sandbox = await asyncio.shield(entry.task)
        entry.last_activity = self.clock()
        if entry.first_wait_s is None:
            entry.first_wait_s = waited = entry.last_activity - began
            self.metrics.starts.labels(entry.kind).inc()
            self.metrics.start_seconds.labels(entry.kind).observe(waited)
        return sandbox

    async def run_tool(
        self,
        program_id: str,
        cls: ProgramClassConfig,
        tool: str,
        arguments: bytes,
        *,
        timeout_s: float | None = None,
        max_output_bytes: int | None = None,
    ) -> ToolResult:
        """Run ``tool`` with ``arguments`` on stdin; the call's limits may only be lowered."""
        spec = cls.tool(tool)
        if spec is None:
            raise UnknownTool(f"class {cls.name} has no tool {tool!r}")
        call = ToolCall(
            spec, arguments,
            min(spec.timeout_s, timeout_s) if timeout_s is not None else spec.timeout_s,
            min(spec.max_output_bytes, max_output_bytes) if max_output_bytes is not None else spec.max_output_bytes,
        )  # fmt: skip
        sandbox = await self.acquire(program_id, cls)
        entry = self._entries.get(program_id)
        if entry is None:
            raise SandboxError(f"program {program_id} was released")
        entry.busy += 1
        # A caller that goes away (client disconnect) does not end the call: the process runs to
        # its end or timeout, and the sandbox counts as busy (never collected) until then.
        call_task = asyncio.ensure_future(self._call(entry, sandbox, call))
        self._background.add(call_task)
        call_task.add_done_callback(self._background.discard)
        return await asyncio.shield(call_task)

    async def _call(self, entry: SandboxEntry, sandbox: Sandbox, call: ToolCall) -> ToolResult:
        cls = entry.cls
        limit = cls.sandbox.resources.disk_bytes if cls.sandbox else None
        try:
            async with entry.lock:
                if entry.over_disk is not None:
                    raise SandboxDiskFull(
                        f"the sandbox uses {entry.over_disk} bytes of disk, over its limit of {limit}; "
                        "release the program"
                    )
                result = await self._blocking(self.backend.run, sandbox, cls, call)
                if limit is not None:  # measuring walks the whole directory: only when it is checked
                    entry.usage = await self._blocking(self.backend.usage, sandbox)
        finally:
            entry.busy -= 1
            entry.last_activity = self.clock()
        entry.tool_calls += 1
        if limit is not None and entry.usage.disk_bytes > limit:
            entry.over_disk = entry.usage.disk_bytes
        outcome = "timeout" if result.timed_out else ("ok" if result.exit_code == 0 else "failed")
        self.metrics.tool_calls.labels(cls.name, call.tool.name, outcome).inc()
        self.metrics.tool_seconds.labels(cls.name, call.tool.name).observe(result.duration_s)
        return result

    async def release(self, program_id: str, reason: str = "release") -> bool:
        """Remove the program's sandbox (kills its processes); False if it had none."""
        entry = self._entries.pop(program_id, None)
        if entry is None:
            return False
        task = entry.task
        if task is None:
            return True
        if not entry.started and not task.done():
            task.cancel()  # queued behind the cap: nothing was created
            await asyncio.gather(task, return_exceptions=True)
            return True
        # A preparation in progress finishes and then removes itself (see _prepare).
        done = await asyncio.gather(task, return_exceptions=True)
        if isinstance(done[0], Sandbox):
            await self._destroy(done[0], reason)
        return True

    async def ledger(self, program_id: str) -> dict[str, object] | None:
        """What the program holds (``GET /v1/programs/{id}`` shows it); None if it has no sandbox."""
        entry = self._entries.get(program_id)
        if entry is None:
            return None
        sandbox = entry.ready()
        if sandbox is not None:
            entry.usage = await self._blocking(self.backend.usage, sandbox)
        return entry.ledger(self.backend.name, self.clock())

    def states(self) -> dict[str, int]:
        """Sandboxes by state (metrics, benchmarks)."""
        counts = {"preparing": 0, "idle": 0, "busy": 0, "warm": self.warm.ready()}
        for entry in self._entries.values():
            counts[entry.state()] = counts.get(entry.state(), 0) + 1
        return counts

    def programs(self) -> list[str]:
        return list(self._entries)

    async def gc(self) -> int:
        """Remove sandboxes idle past their class's ``ttlSeconds``; returns how many."""
        now = self.clock()
        expired = [
            e.program_id for e in self._entries.values()
            if e.busy == 0 and e.cls.sandbox is not None and now - e.last_activity >= e.cls.sandbox.ttl_seconds
        ]  # fmt: skip
        for pid in expired:
            await self.release(pid, reason="ttl")
        return len(expired)

    async def recover(self) -> int:
        """Remove every sandbox of this router the backend finds that this manager does not hold."""
        existing = await self._blocking(self.backend.list_existing)
        # What this manager holds is read after the listing: creations may start during it.
        held = self.warm.ids() | self._creating
        held |= {sandbox.sandbox_id for e in self._entries.values() if (sandbox := e.ready()) is not None}
        orphans = [sb for sb in existing if sb.sandbox_id not in held]
        for sb in orphans:
            log.info("removing orphaned sandbox %s (program %s)", sb.sandbox_id, sb.program_id)
            await self._destroy(sb, "orphan")
        return len(orphans)

    # internals -------------------------------------------------------------------------------------

    def _new_entry(self, program_id: str, cls: ProgramClassConfig, wait_for_slot: bool) -> SandboxEntry:
        alive = len(self._entries) + self.warm.held()
        if alive >= self.settings.max_sandboxes and not self.warm.has(cls.name):
            raise SandboxLimitReached(f"{alive} sandboxes are alive, the router's limit (sandboxes.maxSandboxes)")
        now = self.clock()
        entry = SandboxEntry(program_id, cls, now, now)
        self._entries[program_id] = entry
        entry.task = asyncio.create_task(self._prepare(entry, wait_for_slot), name=f"sandbox-{program_id}")
        entry.task.add_done_callback(_retrieve)
        return entry

    async def _prepare(self, entry: SandboxEntry, wait_for_slot: bool) -> Sandbox:
        warm = self.warm.take(entry.cls)
        if warm is not None:
            entry.started, entry.kind = True, "warm"
            sandbox = await self._in_thread(self.backend.assign, warm, entry.program_id)
            entry.prepare_s = 0.0
        elif wait_for_slot:
            async with self._slots:
                entry.started = True
                sandbox, entry.prepare_s = await self._create(entry.cls, entry.program_id)
        else:
            entry.started = True
            sandbox, entry.prepare_s = await self._create(entry.cls, entry.program_id)
        if self._entries.get(entry.program_id) is not entry:  # released while it was being prepared
            await self._destroy(sandbox, "release")
            raise SandboxError(f"program {entry.program_id} was released")
        return sandbox

    async def _create(self, cls: ProgramClassConfig, program_id: str | None) -> tuple[Sandbox, float]:
        """A new sandbox and the seconds its creation and preparation took."""
        began = self.clock()
        sandbox_id = f"sb-{uuid.uuid4().hex[:16]}"
        self._creating.add(sandbox_id)
        try:
            sandbox = await self._in_thread(self.backend.create, sandbox_id, cls, program_id)
        finally:
            self._creating.discard(sandbox_id)
        seconds = self.clock() - began
        self.metrics.prepare_seconds.observe(seconds)
        return sandbox, seconds

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking backend work; if the caller is cancelled, a sandbox it created is removed."""
        future = asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            def cleanup(done: asyncio.Future[T]) -> None:
                if not done.cancelled() and done.exception() is None and isinstance(done.result(), Sandbox):
                    self._spawn(self._destroy(done.result(), "cancelled"))  # type: ignore[arg-type]

            future.add_done_callback(cleanup)
            raise

    async def _destroy(self, sandbox: Sandbox, reason: str) -> None:
        try:
            await self._blocking(self.backend.destroy, sandbox)
        except Exception as exc:  # logged and counted: the next recover() tries again
            log.error("sandbox %s could not be removed: %s", sandbox.sandbox_id, exc)
            self.metrics.leaks.inc()
            return
        self.metrics.removed.labels(reason).inc()

    async def _create_warm(self, cls: ProgramClassConfig) -> Sandbox:
        async with self._slots:
            sandbox, _ = await self._create(cls, None)
        return sandbox

    def _room(self) -> int:
        return self.settings.max_sandboxes - len(self._entries) - self.warm.held()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _observe(self) -> None:
        """The gauges read the manager when scraped (usage: as of each program's latest call or ledger)."""
        for state in ("preparing", "idle", "busy", "warm"):
            self.metrics.sandboxes.labels(state).set_function(lambda state=state: self.states().get(state, 0))

        def usages() -> list[Usage]:
            return [e.usage for e in self._entries.values()]

        self.metrics.processes.set_function(lambda: sum(u.processes for u in usages()))
        self.metrics.ports.set_function(lambda: sum(u.ports for u in usages()))
        self.metrics.disk_bytes.set_function(lambda: sum(u.disk_bytes for u in usages()))

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.gc_interval_s)
            try:
                await self.gc()
            except Exception:  # one failed round must not end GC for good
                log.exception("sandbox GC round failed")
