"""Helpers of the sandbox tests: program classes with tools."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from shoal.router.programs.config import ProgramClassConfig
from shoal.router.sandboxes.backend import (
    Sandbox,
    SandboxError,
    SandboxUnavailable,
    ToolCall,
    ToolResult,
    Usage,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="local isolation (namespaces, uids) needs root")


def make_class(
    name: str = "coder",
    tools: list[dict[str, Any]] | None = None,
    prepare: list[str] | None = None,
    **sandbox: Any,
) -> ProgramClassConfig:
    return ProgramClassConfig.model_validate(
        {
            "name": name,
            "model": "m",
            "sandbox": {"command": prepare or ["true"], **sandbox},
            "tools": tools if tools is not None else [{"name": "sh", "command": ["sh", "-c", "cat"]}],
        }
    )


def shell_tool(name: str, script: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "command": ["sh", "-c", script], **kw}


class FakeBackend:
    """An in-memory backend: ``create`` takes ``prepare_s`` (real seconds), tools echo stdin."""

    name = "fake"

    def __init__(self, prepare_s: float = 0.0) -> None:
        self.prepare_s = prepare_s
        self.alive: dict[str, Sandbox] = {}
        self.created = 0
        self.preparing = 0
        self.max_preparing = 0
        self.disk = 0
        self.failures = 0
        """The next this many creations fail (a broken preparation)."""
        self._lock = threading.Lock()

    def check(self, cls: ProgramClassConfig) -> None:
        if cls.sandbox is None:
            raise SandboxUnavailable(f"class {cls.name} has no sandbox")

    def create(self, sandbox_id: str, cls: ProgramClassConfig, program_id: str | None) -> Sandbox:
        with self._lock:
            self.preparing += 1
            self.max_preparing = max(self.max_preparing, self.preparing)
        time.sleep(self.prepare_s)
        with self._lock:
            self.preparing -= 1
            if self.failures:
                self.failures -= 1
                raise SandboxError("preparation failed: exit code 1")
            self.created += 1
            sandbox = Sandbox(sandbox_id, cls.name, program_id, f"fake/{sandbox_id}")
            self.alive[sandbox_id] = sandbox
        return sandbox

    def assign(self, sandbox: Sandbox, program_id: str) -> Sandbox:
        assigned = replace(sandbox, program_id=program_id)
        self.alive[sandbox.sandbox_id] = assigned
        return assigned

    def run(self, sandbox: Sandbox, cls: ProgramClassConfig, call: ToolCall) -> ToolResult:
        assert sandbox.sandbox_id in self.alive, "tool run in a removed sandbox"
        out = call.stdin[: call.max_output_bytes].decode()
        return ToolResult(out, "", len(call.stdin) > call.max_output_bytes, False, 0, 0.001, False)

    def usage(self, sandbox: Sandbox) -> Usage:
        return Usage(0, 0, self.disk if sandbox.sandbox_id in self.alive else 0)

    def destroy(self, sandbox: Sandbox) -> None:
        self.alive.pop(sandbox.sandbox_id, None)

    def list_existing(self) -> list[Sandbox]:
        return list(self.alive.values())


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
