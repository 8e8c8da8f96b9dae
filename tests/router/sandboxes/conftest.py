"""Sandbox test setup: the helpers in this folder importable as ``_sandbox_helpers``; a local
backend in a private state directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shoal.router.sandboxes.local import LocalBackend
from shoal.router.sandboxes.settings import SandboxSettings

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(SandboxSettings(state_dir=str(tmp_path / "state"), router_id="test"))
