"""Acceptance 2: programs released, abandoned and crashing mid-call leave nothing behind,
also across a router restart with sandboxes alive (real local sandboxes)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from _sandbox_helpers import FakeClock, make_class, needs_root, shell_tool

from shoal.router.sandboxes.local import LocalBackend
from shoal.router.sandboxes.local_process import listening_ports
from shoal.router.sandboxes.manager import SandboxManager
from shoal.router.sandboxes.settings import SandboxSettings

# A tool that leaves a listening socket and a background process behind, and one that hangs.
SERVE = "import socket,os; s=socket.create_server(('127.0.0.1',0)); print(s.getsockname()[1]); os.fork() or __import__('time').sleep(300)"
NOTHING = {"sandboxes": 0, "entries": 0, "uid_claims": 0, "processes": 0, "ports": 0}
TOOLS = [
    {"name": "work", "command": ["python3", "-c", SERVE]},
    {"name": "listen", "command": ["python3", "-c", SERVE.replace("os.fork() or ", "")], "timeoutS": 5},
    shell_tool("hang", "echo started; sleep 300", timeoutS=1.5),
    shell_tool("write", "cat > args.json; head -c 100000 /dev/zero > blob; echo ok"),
]


def leftovers(backend: LocalBackend, settings: SandboxSettings) -> dict[str, int]:
    """Everything a sandbox could leave: records/dirs, uid claims, processes, listening sockets."""
    uids = range(settings.uid_base, settings.uid_base + settings.uid_count)
    pids = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _live_uid(pid) in uids]
    return {
        "sandboxes": len(backend.list_existing()),
        "entries": len(list(backend.dir.iterdir())),
        "uid_claims": len(list(backend.uid_dir.iterdir())),
        "processes": len(pids),
        "ports": listening_ports(pids),
    }


def _live_uid(pid: str) -> int:
    """Real uid of a live process; -1 for zombies and processes gone meanwhile."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except (OSError, ValueError):
        return -1
    return -1 if fields["State"].split()[0] == "Z" else int(fields["Uid"].split()[0])


async def run_programs(m: SandboxManager, n: int, clock: FakeClock) -> None:
    cls = make_class(tools=TOOLS, network="none", ttl_seconds=60)
    third = n // 3

    async def released(i: int) -> None:
        await m.run_tool(f"rel{i}", cls, "work", b"{}")
        await m.run_tool(f"rel{i}", cls, "write", b'{"a": 1}')
        assert await m.release(f"rel{i}")

    async def abandoned(i: int) -> None:  # never released: its client went away between calls
        result = await m.run_tool(f"aba{i}", cls, "write", b"{}")
        assert result.stdout == "ok\n", result

    async def crashing(i: int) -> None:  # its client dies while the tool runs
        call = asyncio.create_task(m.run_tool(f"cra{i}", cls, "hang", b"{}"))
        await asyncio.sleep(0.3)
        call.cancel()

    await asyncio.gather(*(f(i) for i in range(third) for f in (released, abandoned, crashing)))
    ledger = await m.ledger("aba0")
    assert ledger is not None and ledger["disk_bytes"] >= 100_000 and ledger["processes"] == 0
    assert len(m.programs()) == 2 * third
    while m.states()["busy"] or m.states()["preparing"]:  # the crashed calls run to their timeout
        await asyncio.sleep(0.1)
    clock.now += 59
    assert await m.gc() == 0
    clock.now += 2
    assert await m.gc() == 2 * third


async def check_no_leaks(tmp_path: Path, n: int) -> None:
    settings = SandboxSettings(state_dir=str(tmp_path / "state"), router_id="leaks", uid_base=1_300_000, uid_count=2000)
    clock = FakeClock()
    backend = LocalBackend(settings)
    m = SandboxManager(backend, settings, clock=clock)
    await run_programs(m, n, clock)
    assert m.programs() == [] and sum(m.states().values()) == 0
    assert leftovers(backend, settings) == NOTHING
    assert m.metrics.leaks._value.get() == 0

    # A router dies with sandboxes alive (one mid-call); a new one over the same state dir cleans up.
    cls = make_class(tools=TOOLS, network="none")
    crashed = SandboxManager(backend, settings, clock=clock)
    for i in range(n // 10):
        await crashed.run_tool(f"alive{i}", cls, "write", b"{}")
    hanging = asyncio.create_task(crashed.run_tool("alive-hanging", cls, "listen", b"{}"))
    for _ in range(40):  # until the tool listens
        await asyncio.sleep(0.1)
        ledger = await crashed.ledger("alive-hanging")
        if ledger is not None and ledger["ports"] == 1:
            break
    assert ledger is not None and ledger["state"] == "busy" and ledger["processes"] == 1 and ledger["ports"] == 1
    assert leftovers(backend, settings)["sandboxes"] == n // 10 + 1
    restarted = SandboxManager(LocalBackend(settings), settings, clock=clock)
    assert await restarted.recover() == n // 10 + 1
    await asyncio.gather(hanging, return_exceptions=True)
    assert leftovers(backend, settings) == NOTHING


@needs_root
async def test_no_leaks_30_programs(tmp_path: Path) -> None:
    await check_no_leaks(tmp_path, 30)


@needs_root
@pytest.mark.slow
async def test_no_leaks_300_programs(tmp_path: Path) -> None:
    await check_no_leaks(tmp_path, 300)
