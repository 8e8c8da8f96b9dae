"""The local process supervisor behind ``shoal up``: start, health-check and stop process groups.

Every child runs in its own session (process group), so a terminal's Ctrl-C reaches only the
supervisor, which then stops the groups in order: SIGTERM, a grace period, SIGKILL, and a wait
for each. A child also gets SIGTERM if the supervisor dies without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from shoal.operator.local_plan import OnDemandPool, ProcessSpec
from shoal.operator.scale_to_zero import Demand, DemandUnavailable, decide, merge, parse_demand

STATE_FILE = "state.json"
_PR_SET_PDEATHSIG = 1


def default_state_dir() -> Path:
    return Path(os.environ.get("SHOAL_HOME") or ".shoal")


def free_ports() -> Iterator[int]:
    """Ports the OS reports free on 127.0.0.1 (held until the next one is picked, so no repeats)."""
    held: list[socket.socket] = []
    try:
        while True:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
            yield sock.getsockname()[1]
    finally:
        for sock in held:
            sock.close()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _child_setup(parent: int) -> Callable[[], None]:
    def setup() -> None:
        # Runs in the child between fork and exec.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


@dataclass
class Child:
    """A started process."""

    spec: ProcessSpec
    proc: subprocess.Popen[bytes]
    healthy: bool = False

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.spec.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ChildFailed(Exception):
    """A child exited or never became healthy."""


class Supervisor:
    """Starts processes in their own process groups and guarantees they are gone after ``stop``."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.children: list[Child] = []
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        # The on-demand thread starts and stops engines while the main thread polls health.
        self.lock = threading.RLock()

    def start(self, spec: ProcessSpec) -> Child:
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log, "ab") as log:
            proc = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self._env, **dict(spec.env)},
                start_new_session=True,
                preexec_fn=_child_setup(os.getpid()),
            )
        child = Child(spec, proc)
        with self.lock:
            self.children.append(child)
        return child

    def stop_some(self, names: set[str], grace: float = 15.0) -> None:
        """Stop the children with these names (SIGTERM, then SIGKILL after ``grace``); the rest run on."""
        with self.lock:
            leaving = [c for c in self.children if c.spec.name in names]
            self.children = [c for c in self.children if c.spec.name not in names]
        _stop_children(leaving, grace)

    def poll_health(self, client: httpx.Client) -> None:
        """Re-probe every child's health (a router turns unhealthy while its engines are); ChildFailed on exit."""
        with self.lock:
            children = list(self.children)
        for child in children:
            code = child.proc.poll()
            if code is not None:
                with self.lock:
                    if child not in self.children:
                        continue  # stopped on purpose (scaled to zero) while this round ran
                raise ChildFailed(f"{child.spec.name} exited with status {code}; log {child.spec.log}:\n{child.tail()}")
            try:
                child.healthy = client.get(child.spec.health_url, timeout=2).status_code == 200
            except httpx.HTTPError:
                child.healthy = False

    def wait_healthy(
        self,
        timeout: float,
        on_progress: Callable[[list[Child], float], None] = lambda children, elapsed: None,
        interval: float = 0.5,
    ) -> None:
        """Block until every child answers its health check; ChildFailed on exit or timeout."""
        start = time.monotonic()
        with httpx.Client(trust_env=False) as client:
            while True:
                self.poll_health(client)
                elapsed = time.monotonic() - start
                on_progress(self.children, elapsed)
                if all(c.healthy for c in self.children):
                    return
                if elapsed > timeout:
                    waiting = [c for c in self.children if not c.healthy]
                    names = ", ".join(c.spec.name for c in waiting)
                    raise ChildFailed(f"not healthy after {timeout:.0f}s: {names}; log {waiting[0].spec.log}:\n"
                                      f"{waiting[0].tail()}")  # fmt: skip
                time.sleep(interval)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM every process group (routers first), then SIGKILL what is left; reap all."""
        with self.lock:
            leaving, self.children = self.children, []
        _stop_children(list(reversed(leaving)), grace)


def _stop_children(children: list[Child], grace: float) -> None:
    for child in children:
        signal_group(child.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(max(0.0, deadline - time.monotonic()))
    for child in children:
        # Kill the whole group even if the leader exited: it may have left workers behind.
        signal_group(child.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(5)


class OnDemandEngines(threading.Thread):
    """Scale to zero locally: starts a minReplicas-0 pool's engines when its routers hold (or
    serve) a request for it, and stops them once every router reports it idle for
    ``scaleToZeroAfterSeconds``; the same rule as the operator's (operator/scale_to_zero.py)."""

    def __init__(
        self,
        supervisor: Supervisor,
        pools: tuple[OnDemandPool, ...],
        on_change: Callable[[str], None] = lambda line: None,
        interval: float = 0.25,
    ) -> None:
        super().__init__(name="on-demand-engines", daemon=True)
        self.supervisor = supervisor
        self.pools = pools
        self.on_change = on_change
        self.interval = interval
        self.running: set[str] = set()
        self._stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(trust_env=False, timeout=2) as client:
            while not self._stopped.wait(self.interval):
                for pool in self.pools:
                    self.step(client, pool)

    def stop(self) -> None:
        self._stopped.set()
        self.join(10)

    def step(self, client: httpx.Client, pool: OnDemandPool) -> None:
        answers: list[Demand] = []
        complete = True
        for url in pool.demand_urls:
            try:
                demand = parse_demand(client.get(url).json()).get(pool.name)
            except (httpx.HTTPError, ValueError, DemandUnavailable):
                demand = None
            complete &= demand is not None
            answers += [demand] if demand is not None else []
        up = pool.name in self.running
        target = decide(len(pool.processes) if up else 0, pool.autoscaling, merge(answers) if answers else None,
                        complete)  # fmt: skip
        if target and not up:
            for spec in pool.processes:
                self.supervisor.start(spec)
            self.running.add(pool.name)
            self.on_change(f"ModelPool {pool.name}: a request is waiting; started {len(pool.processes)} engine(s)")
        elif target == 0 and up:
            self.supervisor.stop_some({spec.name for spec in pool.processes})
            self.running.discard(pool.name)
            self.on_change(f"ModelPool {pool.name}: no request for {pool.autoscaling.idle_seconds}s; engines stopped")


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def group_alive(pgid: int) -> bool:
    return signal_group(pgid, 0)


@dataclass(frozen=True)
class RunState:
    """What a running ``shoal up`` publishes for ``shoal status`` and ``shoal down``."""

    pid: int
    started: float
    endpoints: dict[str, str]
    processes: list[dict[str, Any]]
    """name, pid (= process group id), url, log."""

    @classmethod
    def of(cls, supervisor: Supervisor, endpoints: dict[str, str]) -> RunState:
        with supervisor.lock:
            children = list(supervisor.children)
        processes = [
            {"name": c.spec.name, "pid": c.proc.pid, "url": c.spec.url, "log": str(c.spec.log)} for c in children
        ]
        return cls(os.getpid(), time.time(), endpoints, processes)

    def write(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(state_dir / STATE_FILE)

    @classmethod
    def read(cls, state_dir: Path) -> RunState | None:
        try:
            return cls(**json.loads((state_dir / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @staticmethod
    def clear(state_dir: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            (state_dir / STATE_FILE).unlink()


def pid_alive(pid: int) -> bool:
    """Whether the process runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stop_running(state_dir: Path, timeout: float = 30.0) -> bool:
    """Stop a ``shoal up`` recorded in ``state_dir``: SIGTERM its supervisor, then mop up its groups.

    Returns False when nothing was running.
    """
    state = RunState.read(state_dir)
    if state is None:
        return False
    if pid_alive(state.pid):
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(state.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    for proc in state.processes:  # the supervisor was killed hard, or is stuck
        signal_group(int(proc["pid"]), signal.SIGKILL)
    RunState.clear(state_dir)
    return True
