"""Acceptance 5: the example agent against ``shoal up`` (real router, real local sandboxes),
with a scripted model that calls the AgentProgram's tools; every sandbox is gone afterwards.

The bundled SmolLM2-135M cannot be this model: its chat template renders neither tools nor
tool calls, so it never calls a tool (see examples/agent/README.md).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from support.api import wait_for
from support.up import Up

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
AGENT = REPO / "examples" / "agent"
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def load_agent() -> object:
    spec = importlib.util.spec_from_file_location("example_agent", AGENT / "agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["example_agent"] = module
    spec.loader.exec_module(module)
    return module


def test_example_agent_completes_a_task_and_leaves_no_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    shutil.copy(REPO / "crds" / "examples" / "local" / "smollm2.yaml", folder / "smollm2.yaml")
    shutil.copy(AGENT / "agentprogram.yaml", folder / "agentprogram.yaml")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join((str(HERE), os.environ.get("PYTHONPATH", ""))))  # the scripted model, for `python -m`
    up = Up(tmp_path, folder, "--engine-module", "scripted_engine")
    try:
        state = up.wait_ready()
        agent = load_agent()
        answer = agent.run_agent(  # type: ignore[attr-defined]
            state.endpoints["local"], "none", AGENT / "agentprogram.yaml", "the sandbox kept my notes", 6
        )
        assert answer == "Done: THE SANDBOX KEPT MY NOTES"
        sandboxes = up.state / "routers" / "local" / "sandboxes"
        program_class = yaml.safe_load((AGENT / "agentprogram.yaml").read_text())["metadata"]["name"]
        assert program_class == "file-agent"

        def only_the_warm_pool_left() -> bool:
            records = list((sandboxes / "router").glob("*.json"))
            return len(records) == 1 and '"program_id": null' in records[0].read_text()

        wait_for(only_the_warm_pool_left, 20, 0.1, "the program's sandbox to be removed")
        down = up.cli("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert up.proc.wait(30) == 0
        assert list((sandboxes / "router").iterdir()) == [] and list((sandboxes / "uids").iterdir()) == []
    finally:
        up.kill()
