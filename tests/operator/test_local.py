"""`shoal up` / `status` / `down`: manifests, the process plan, and the supervisor's lifecycle.

The lifecycle tests run the real router in front of a stand-in engine (starts instantly);
tests/operator/test_local_demo.py runs the real engine on the bundled model.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.operator.local_plan import plan_stack
from shoal.operator.local_runtime import RunState
from shoal.operator.manifests import ManifestError, load_stack
from support.api import wait_for
from support.up import Up, assert_gone

REPO = Path(__file__).resolve().parents[2]
POOL: dict[str, Any] = {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelPool", "metadata": {"name": "smol"},
        "spec": {"model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "smol-chat"}, "replicas": 2}}
ROUTER: dict[str, Any] = {"apiVersion": "shoal.dev/v1alpha1", "kind": "Router", "metadata": {"name": "front"},
          "spec": {"pools": [{"name": "smol"}], "auth": {"apiKeysSecret": {"name": "keys"}}}}
SECRET: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"}, "stringData": {"alice": "sk-alice"}}
PROGRAM: dict[str, Any] = {"apiVersion": "shoal.dev/v1alpha1", "kind": "AgentProgram", "metadata": {"name": "coder"},
           "spec": {"router": "front", "model": "smol-chat"}}  # fmt: skip


def write(folder: Path, *docs: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stack.yaml").write_text(yaml.safe_dump_all(docs))
    return folder


def test_local_examples_load() -> None:
    stack = load_stack([REPO / "crds" / "examples" / "local"])
    assert list(stack.pools) == ["smollm2"] and list(stack.routers) == ["local"] and list(stack.programs) == ["coder"]
    assert stack.pools["smollm2"].replicas == 1


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        ([ROUTER, SECRET], "no ModelPool in the manifests"),
        ([POOL, {**ROUTER, "spec": {"pools": [{"name": "gone"}]}}], "PoolNotFound: no ModelPool gone"),
        ([POOL, ROUTER], "SecretNotFound: no Secret keys"),
        ([POOL, {**PROGRAM, "spec": {"router": "nowhere", "model": "m"}}], "RouterNotFound"),
        ([{**POOL, "spec": {"model": {"uri": "pvc://c/m", "servedModelName": "m"}}}], "need a cluster"),
        ([{**POOL, "spec": {"model": {"uri": "file:///nope/m.gguf", "servedModelName": "m"}}}], "does not exist"),
        ([{**POOL, "spec": {**POOL["spec"], "replicas": -1}}], "SpecInvalid: spec.replicas"),
        ([POOL, POOL], "defined twice"),
        ([POOL, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}], "not Pod"),
        ([POOL, ROUTER, SECRET, {**PROGRAM, "spec": {**PROGRAM["spec"], "sandbox": {"image": "python:3.12"}}}],
         "FeatureNotSupported: sandbox.image needs a cluster"),
        ([POOL, ROUTER, SECRET, {**PROGRAM, "spec": {**PROGRAM["spec"], "sandbox": {
            "command": ["true"], "resources": {"limits": {"cpu": "2"}}}}}], "cpu cannot be enforced locally"),
        ([POOL, ROUTER, SECRET, {**PROGRAM, "spec": {"router": "front", "model": "gpt-9"}}],
         "ModelNotServed: Router front serves no model gpt-9"),
        ([{**POOL, "spec": {**POOL["spec"], "engine": {"auth": {"apiKeySecretRef": {"name": "keys"}}}}}, SECRET],
         "SecretNotFound: no Secret keys with key api-key"),
    ],
)
def test_invalid_manifests_give_one_line(tmp_path: Path, docs: list[dict], message: str) -> None:
    with pytest.raises(ManifestError) as err:
        load_stack([write(tmp_path, *docs)])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_reports_an_invalid_manifest_in_one_line(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {**POOL, "spec": {"model": {"uri": "s3://x/y", "servedModelName": "m"}}})
    proc = subprocess.run([sys.executable, "-m", "shoal.operator", "up", "-f", str(folder), "--state-dir",
                           str(tmp_path / "state")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "ModelSourceInvalid" in lines[0]


def test_plan(tmp_path: Path) -> None:
    autoscaled = {**POOL, "spec": {**POOL["spec"], "autoscaling": {"minReplicas": 1, "maxReplicas": 3}}}
    stack = load_stack([write(tmp_path / "m", autoscaled, ROUTER, SECRET, PROGRAM)])
    plan = plan_stack(stack, tmp_path / "s", itertools.count(9001), python="py", router_port=8088)
    names = [p.name for p in plan.processes]
    assert names == ["engine/smol-0", "engine/smol-1", "router/front"]
    engine = plan.processes[0].argv
    assert engine[:4] == ("py", "-m", "shoal.engine", "serve")
    assert "--port" in engine and engine[engine.index("--port") + 1] == "9001"
    config = yaml.safe_load(plan.files[tmp_path / "s" / "routers" / "front" / "router.yaml"])
    assert config["pools"][0]["endpoints"] == {"static": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]}
    assert config["listen"] == {"host": "127.0.0.1", "port": 8088}
    assert config["auth"]["apiKeysFile"] == str(tmp_path / "s" / "routers" / "front" / "api-keys")
    assert plan.files[tmp_path / "s" / "routers" / "front" / "api-keys" / "alice"] == "sk-alice\n"
    classes_file = tmp_path / "s" / "routers" / "front" / "classes.yaml"
    assert config["programs"]["classesFile"] == str(classes_file)
    classes = yaml.safe_load(plan.files[classes_file])["classes"]
    assert [(c["name"], c["model"]) for c in classes] == [("coder", "smol-chat")]
    assert all(not p.env for p in plan.processes[:-1])  # keyless engines: no credentials anywhere
    assert plan.processes[-1].env == (("SHOAL_STATE_DIR", str(tmp_path / "s" / "routers" / "front")),)
    assert plan.endpoints == {"front": "http://127.0.0.1:8088/v1"}
    assert plan.api_keys == {"front": "sk-alice"} and plan.models == {"front": "smol-chat"}
    assert plan.notes and "autoscaling is not emulated" in plan.notes[0]


def test_plan_passes_the_engine_key_by_environment(tmp_path: Path) -> None:
    secured = {**POOL, "spec": {**POOL["spec"], "engine": {"auth": {"apiKeySecretRef": {"name": "keys", "key": "alice"}}}}}
    stack = load_stack([write(tmp_path / "m", secured, ROUTER, SECRET)])
    plan = plan_stack(stack, tmp_path / "s", itertools.count(9001), python="py")
    for process in plan.processes:
        assert "sk-alice" not in " ".join(process.argv)
    assert plan.processes[0].env == (("SHOAL_API_KEY", "sk-alice"),)
    assert ("SHOAL_UPSTREAM_API_KEY", "sk-alice") in plan.processes[-1].env
    config = yaml.safe_load(plan.files[tmp_path / "s" / "routers" / "front" / "router.yaml"])
    assert config["upstream"] == {"apiKeyEnv": "SHOAL_UPSTREAM_API_KEY"}


FAKE = ("--engine-module", "support.fake_engine")


@pytest.mark.integration
def test_up_demo_status_down_leaves_no_process(tmp_path: Path) -> None:
    up = Up(tmp_path, write(tmp_path / "m", POOL, ROUTER, SECRET, PROGRAM), "--demo", *FAKE)
    try:
        state = up.wait_ready()
        wait_for(lambda: "answer: Paris." in up.text(), 60, 0.2, "the demo answer")
        pids = [p["pid"] for p in state.processes] + [state.pid]
        assert [p["name"] for p in state.processes] == ["engine/smol-0", "engine/smol-1", "router/front"]
        assert state.endpoints == {"front": f"http://127.0.0.1:{up.port}/v1"}
        status = up.cli("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("healthy") == 3
        # The AgentProgram is a class the real router loaded (read with the router's API key).
        assert "front: program classes" in status.stdout and "coder" in status.stdout, status.stdout
        down = up.cli("down")
        assert down.returncode == 0 and "stopped" in down.stdout
        assert up.proc.wait(30) == 0
        assert_gone(pids)
        assert "stopped: no process left" in up.text()
        assert RunState.read(up.state) is None
        assert up.cli("status").returncode == 1
    finally:
        up.kill()


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_everything(tmp_path: Path, sig: signal.Signals) -> None:
    up = Up(tmp_path, write(tmp_path / "m", POOL, ROUTER, SECRET), *FAKE)
    try:
        state = up.wait_ready()
        up.proc.send_signal(sig)
        assert up.proc.wait(30) == 0
        assert_gone([p["pid"] for p in state.processes])
    finally:
        up.kill()


@pytest.mark.integration
def test_children_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    up = Up(tmp_path, write(tmp_path / "m", POOL), *FAKE)
    try:
        state = up.wait_ready()
        os.kill(up.proc.pid, signal.SIGKILL)  # no cleanup code runs: the kernel's parent-death signal must
        up.proc.wait()
        assert_gone([p["pid"] for p in state.processes])
        assert up.cli("down").returncode == 0  # clears the stale state
        assert RunState.read(up.state) is None
    finally:
        up.kill()


def test_up_refuses_to_run_twice(tmp_path: Path) -> None:
    state = tmp_path / "state"
    RunState(os.getpid(), time.time(), {}, []).write(state)
    proc = subprocess.run([sys.executable, "-m", "shoal.operator", "up", "-f", str(REPO / "crds/examples/local"),
                           "--state-dir", str(state)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1 and "already running" in proc.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_local_agentprogram_example_runs_its_tool_in_a_sandbox_and_leaves_nothing(tmp_path: Path) -> None:
    """crds/examples/local/agentprogram.yaml under `shoal up`: its class is loaded, its tool runs in a
    network-less sandbox under the state dir, and `shoal down` leaves no sandbox behind."""
    import httpx

    up = Up(tmp_path, REPO / "crds" / "examples" / "local", *FAKE)
    try:
        state = up.wait_ready()
        url = state.endpoints["local"]
        chat = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}],
                "program_id": "p1", "program_class": "coder", "max_tokens": 4}  # fmt: skip
        assert httpx.post(f"{url}/chat/completions", json=chat, timeout=30).status_code == 200
        tool = f"{url}/programs/p1/tools/run_python"
        ran = httpx.post(tool, json={"arguments": {"code": "import os; print(6 * 7, os.getcwd())"}}, timeout=30).json()
        assert ran["exit_code"] == 0 and ran["stdout"].startswith("42 "), ran
        sandbox_dir = Path(ran["stdout"].split()[1])
        assert sandbox_dir.is_relative_to(up.state / "routers" / "local") and sandbox_dir.is_dir()
        code = f"import socket; socket.create_connection(('127.0.0.1', {up.port}), timeout=2)"
        offline = httpx.post(tool, json={"arguments": {"code": code}}, timeout=30).json()
        assert offline["exit_code"] != 0 and "unreachable" in offline["stderr"], offline  # network: none
        assert up.cli("down").returncode == 0
        assert up.proc.wait(30) == 0
        assert not sandbox_dir.exists()
    finally:
        up.kill()
