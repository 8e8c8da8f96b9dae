"""The sandbox manager over a fake backend: pre-warm cap, warm pool, release races, TTL, limits."""

from __future__ import annotations

import asyncio
import time

import pytest
from _sandbox_helpers import FakeBackend, FakeClock, make_class
from prometheus_client import generate_latest

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.backend import Sandbox, SandboxError
from shoal.router.sandboxes.manager import SandboxDiskFull, SandboxLimitReached, SandboxManager, UnknownTool
from shoal.router.sandboxes.settings import SandboxSettings


def manager(backend: FakeBackend, clock: FakeClock | None = None, **settings: object) -> SandboxManager:
    return SandboxManager(backend, SandboxSettings.model_validate(settings), clock=clock or FakeClock())


async def settle(m: SandboxManager) -> None:
    for _ in range(200):
        await asyncio.sleep(0.005)
        if m.states()["preparing"] == 0 and not m._background:
            return


async def test_prewarm_caps_concurrent_preparations_and_hides_them() -> None:
    backend = FakeBackend(prepare_s=0.05)
    m = manager(backend, max_concurrent_preparations=2)
    cls = make_class()
    for i in range(6):
        await m.prewarm(f"p{i}", cls)
    await settle(m)
    assert backend.max_preparing == 2 and backend.created == 6
    result = await m.run_tool("p0", cls, "sh", b'{"x": 1}')
    assert result.stdout == '{"x": 1}' and result.exit_code == 0
    ledger = await m.ledger("p0")
    assert ledger is not None and ledger["start"] == "prewarmed" and ledger["tool_calls"] == 1


async def test_first_call_does_not_queue_behind_the_cap() -> None:
    backend = FakeBackend(prepare_s=0.2)
    m = manager(backend, max_concurrent_preparations=1)
    cls = make_class()
    for i in range(5):
        await m.prewarm(f"queued{i}", cls)
    await m.run_tool("queued4", cls, "sh", b"hi")  # last in the prewarm queue, needed now
    assert backend.created <= 2  # its own and at most the one holding the slot: it jumped the queue
    await m.stop()
    assert backend.alive == {}


async def test_warm_pool_serves_first_calls_and_refills() -> None:
    backend = FakeBackend(prepare_s=0.01)
    m = manager(backend)
    cls = make_class(warm_pool_size=2)
    m.set_classes([cls])
    await settle(m)
    assert m.states()["warm"] == 2
    await m.run_tool("p1", cls, "sh", b"a")
    ledger = await m.ledger("p1")
    assert ledger is not None and ledger["start"] == "warm"
    await settle(m)
    assert m.states() == {"preparing": 0, "idle": 1, "busy": 0, "warm": 2}
    assert backend.alive[str(ledger["sandbox_id"])].program_id == "p1"
    m.set_classes([])  # class removed: its warm sandboxes go
    await settle(m)
    assert m.states()["warm"] == 0 and len(backend.alive) == 1


async def test_release_during_preparation_leaves_nothing() -> None:
    backend = FakeBackend(prepare_s=0.1)
    m = manager(backend)
    cls = make_class()
    await m.prewarm("p1", cls)
    await asyncio.sleep(0.02)  # creation underway in a thread
    assert await m.release("p1")
    await settle(m)
    assert backend.alive == {} and m.programs() == [] and not await m.release("p1")


async def test_caller_gone_mid_preparation_does_not_leak() -> None:
    backend = FakeBackend(prepare_s=0.1)
    m = manager(backend)
    task = asyncio.create_task(m.run_tool("p1", make_class(), "sh", b""))
    await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await settle(m)
    assert len(backend.alive) == 1 and m.programs() == ["p1"]  # still the program's: TTL ends it
    await m.release("p1")
    assert backend.alive == {}


async def test_ttl_removes_idle_sandboxes_only() -> None:
    clock = FakeClock()
    backend = FakeBackend()
    m = manager(backend, clock)
    cls = make_class(ttl_seconds=60)
    await m.run_tool("old", cls, "sh", b"")
    clock.now += 30
    await m.run_tool("new", cls, "sh", b"")
    clock.now += 31
    assert await m.gc() == 1
    assert m.programs() == ["new"] and len(backend.alive) == 1
    clock.now += 60
    assert await m.gc() == 1 and backend.alive == {}


async def test_recover_removes_what_it_does_not_hold() -> None:
    backend = FakeBackend()
    first = manager(backend)
    for i in range(3):
        await first.run_tool(f"p{i}", make_class(), "sh", b"")
    second = manager(backend)  # a restarted router over the same backend
    assert await second.recover() == 3 and backend.alive == {}


class EarlyRecordBackend(FakeBackend):
    """Like the local backend: the sandbox's record exists before its preparation ends."""

    def create(self, sandbox_id: str, cls: ProgramClassConfig, program_id: str | None) -> Sandbox:
        with self._lock:
            self.alive[sandbox_id] = Sandbox(sandbox_id, cls.name, program_id, f"fake/{sandbox_id}")
        time.sleep(self.prepare_s)
        with self._lock:
            if sandbox_id not in self.alive:
                raise SandboxError("its directory vanished during preparation")
            self.created += 1
            return self.alive[sandbox_id]

    def list_existing(self) -> list[Sandbox]:
        time.sleep(self.prepare_s / 2)  # a slow listing: creations may start meanwhile
        with self._lock:
            return list(self.alive.values())


async def test_recover_spares_sandboxes_being_created() -> None:
    """At start-up the warm pool may already be preparing when orphans are collected (regression:
    recover() removed the half-made warm sandbox, whose preparation then failed)."""
    backend = EarlyRecordBackend(prepare_s=0.2)
    m = manager(backend)
    recovering = asyncio.ensure_future(m.recover())
    await asyncio.sleep(0.02)  # the listing is underway in a thread
    m.set_classes([make_class(warm_pool_size=1)])  # a creation starts meanwhile, its record visible at once
    assert await recovering == 0
    await settle(m)
    assert m.states()["warm"] == 1 and len(backend.alive) == 1 and backend.created == 1


async def test_limits_unknown_tool_and_lowered_call_limits() -> None:
    backend = FakeBackend()
    m = manager(backend, max_sandboxes=1)
    cls = make_class(tools=[{"name": "sh", "command": ["cat"], "maxOutputBytes": 1000}],
                     resources={"diskBytes": 1 << 20})  # fmt: skip
    with pytest.raises(UnknownTool, match="no tool 'nope'"):
        await m.run_tool("p1", cls, "nope", b"")
    result = await m.run_tool("p1", cls, "sh", b"x" * 2000, max_output_bytes=5000)  # cannot raise the limit
    assert len(result.stdout) == 1000 and result.stdout_truncated
    with pytest.raises(SandboxLimitReached, match="maxSandboxes"):
        await m.run_tool("p2", cls, "sh", b"")
    backend.disk = 2 << 20
    await m.run_tool("p1", cls, "sh", b"")  # this call fills the disk ...
    with pytest.raises(SandboxDiskFull, match="over its limit"):  # ... the next one is refused
        await m.run_tool("p1", cls, "sh", b"")


async def test_warm_pool_respects_the_router_limit_and_metrics_tell_the_states() -> None:
    backend = FakeBackend()
    m = manager(backend, max_sandboxes=3)
    cls = make_class(warm_pool_size=5)
    m.set_classes([cls])
    await settle(m)
    assert m.states()["warm"] == 3 and backend.created == 3
    await m.run_tool("p1", cls, "sh", b"")  # takes a warm one; the refill stays within the limit
    await settle(m)
    assert m.states() == {"preparing": 0, "idle": 1, "busy": 0, "warm": 2}
    text = generate_latest(m.metrics.registry).decode()
    assert 'shoal_router_sandboxes{state="warm"} 2.0' in text and 'shoal_router_sandboxes{state="idle"} 1.0' in text
    assert 'shoal_router_sandbox_starts_total{kind="warm"} 1.0' in text
    assert 'shoal_router_tool_calls_total{outcome="ok",program_class="coder",tool="sh"} 1.0' in text
    await m.stop()
    assert backend.alive == {} and 'shoal_router_sandboxes_removed_total{reason="shutdown"} 3.0' in \
        generate_latest(m.metrics.registry).decode()  # fmt: skip


async def test_prepare_time_excludes_the_wait_for_a_preparation_slot() -> None:
    """Regression: prepare_s counted the time queued behind the cap, which inflated the
    preparation that pre-warm is credited with hiding."""
    backend = FakeBackend(prepare_s=0.15)
    m = SandboxManager(backend, SandboxSettings(max_concurrent_preparations=1))  # real clock
    cls = make_class()
    await m.prewarm("first", cls)
    await m.prewarm("second", cls)  # waits ~0.15 s for the slot, then prepares ~0.15 s
    await settle(m)
    second = await m.ledger("second")
    assert second is not None and isinstance(second["prepare_s"], float)
    assert 0.14 < second["prepare_s"] < 0.29  # the buggy figure was >= 0.3 (slot wait + preparation)
    await m.stop()


async def test_a_failed_preparation_is_retried_by_the_next_call() -> None:
    """Regression: a failed (pre-warmed) preparation stayed the program's, failing every later call."""
    backend = FakeBackend()
    backend.failures = 1
    m = manager(backend)
    cls = make_class()
    await m.prewarm("p1", cls)
    await settle(m)
    assert (await m.run_tool("p1", cls, "sh", b"first")).stdout == "first"  # the failed pre-warm is retried
    backend.failures = 1
    with pytest.raises(SandboxError, match="preparation failed"):
        await m.run_tool("p2", cls, "sh", b"")
    assert (await m.run_tool("p2", cls, "sh", b"again")).stdout == "again"
    assert len(backend.alive) == 2


async def test_prewarm_is_a_hint_that_never_raises() -> None:
    m = manager(FakeBackend(), max_sandboxes=1)
    cls = make_class()
    await m.run_tool("p1", cls, "sh", b"")
    await m.prewarm("p2", cls)  # over the limit: logged, not raised
    assert m.programs() == ["p1"]
