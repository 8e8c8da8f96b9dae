"""Fakes for the Kubernetes sandbox backend: an AgentProgram-like class and the exec stream
(a local process standing in for the pod; the in-pod sweep ``kill -9 -1`` is recorded, never run)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.kubernetes import _SWEEP

NS = "team"


def image_class(network: str = "none", owner_uid: str | None = "uid-1") -> ProgramClassConfig:
    owner = {"name": "coder", "uid": owner_uid, "namespace": NS} if owner_uid else None
    return ProgramClassConfig.model_validate({
        "name": "coder", "model": "m",
        "sandbox": {"image": "python:3.12-slim", "network": network, "resources": {"cpuSeconds": 5}},
        "tools": [{"name": "echo", "command": ["cat"]}, {"name": "hang", "command": ["sleep", "5"], "timeoutS": 0.3}],
        "owner": owner,
    })  # fmt: skip


class FakeWS:
    """A finished-or-running exec session over a local process (the subset the backend reads)."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)  # fmt: skip
        self.out = self.err = b""
        self.read = False
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        self.out, self.err = self.proc.communicate()

    def is_open(self) -> bool:
        return self.thread.is_alive() or not self.read

    def update(self, timeout: float = 0) -> None:
        self.thread.join(timeout)

    def peek_stdout(self) -> bool:
        return not self.thread.is_alive() and not self.read

    def read_stdout(self) -> str:
        self.read = True
        return self.out.decode()

    def peek_stderr(self) -> bool:
        return not self.thread.is_alive() and bool(self.err)

    def read_stderr(self) -> str:
        err, self.err = self.err, b""
        return err.decode()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:  # what the in-pod sweep does to the call's processes
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.thread.join()


class FakeExec:
    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.commands: list[tuple[str, list[str]]] = []

    def __call__(self, method: Any, name: str, namespace: str, *, command: list[str], **kw: Any) -> Any:
        assert namespace == NS and kw["tty"] is False
        self.commands.append((name, command))
        if command == _SWEEP:
            return ""
        if command[:2] == ["sh", "-c"] and command[2].startswith("du "):
            return "12\n"
        assert command[:2] == ["sh", "-c"] and command[2].startswith('a="$1"'), command
        return FakeWS(command, self.cwd)


