"""``shoal up`` as a subprocess, for tests: start, wait for ready, run ``status``/``down``, kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from shoal.operator.local_runtime import RunState, free_ports, pid_alive
from support.api import REPO_ROOT, wait_for


class Up:
    """`shoal up` as a subprocess in its own session (like a terminal job); output in ``tmp/up.out``."""

    def __init__(self, tmp: Path, folder: Path, *extra: str) -> None:
        self.state = tmp / "state"
        self.out = tmp / "up.out"
        self.port = next(free_ports())
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.operator", "up", "-f", str(folder), "--state-dir", str(self.state),
                 "--port", str(self.port), *extra],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT,
            )  # fmt: skip

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> RunState:
        wait_for(lambda: "ready:" in self.text() or self.proc.poll() is not None, timeout, 0.2, "shoal up ready")
        assert self.proc.poll() is None, self.text()
        state = RunState.read(self.state)
        assert state is not None
        return state

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shoal.operator", *args, "--state-dir", str(self.state)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def assert_gone(pids: list[int], timeout: float = 20) -> None:
    """Every process in ``pids`` has exited."""
    wait_for(lambda: not [p for p in pids if pid_alive(p)], timeout, 0.1, f"processes {pids} to exit")
