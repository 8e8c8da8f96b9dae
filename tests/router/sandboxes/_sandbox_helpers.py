"""Helpers of the sandbox tests: program classes with tools."""

from __future__ import annotations

import os
from typing import Any

import pytest

from shoal.router.programs.config import ProgramClassConfig

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
