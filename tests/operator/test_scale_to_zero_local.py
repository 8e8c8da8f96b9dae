"""Scale to zero under ``shoal up``: a minReplicas-0 pool's engine process starts on the first
request (the real router holds it meanwhile) and stops after the idle time (stand-in engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shoal.operator.local_plan import plan_stack
from shoal.operator.local_runtime import RunState, free_ports, pid_alive
from shoal.operator.manifests import load_stack
from support.api import wait_for
from support.up import Up, assert_gone

IDLE_S = 10  # the least scaleToZeroAfterSeconds allows
POOL: dict[str, Any] = {
    "apiVersion": "shoal.dev/v1alpha1", "kind": "ModelPool", "metadata": {"name": "smol"},
    "spec": {"model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "smol-chat"},
             "autoscaling": {"minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfterSeconds": IDLE_S}},
}  # fmt: skip
ROUTER: dict[str, Any] = {"apiVersion": "shoal.dev/v1alpha1", "kind": "Router", "metadata": {"name": "front"},
                          "spec": {"pools": [{"name": "smol"}]}}  # fmt: skip
BODY = {"model": "smol-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def write(folder: Path, *docs: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stack.yaml").write_text(yaml.safe_dump_all(docs))
    return folder


def test_plan_leaves_the_engine_to_start_on_demand(tmp_path: Path) -> None:
    plan = plan_stack(load_stack([write(tmp_path / "m", POOL, ROUTER)]), tmp_path, free_ports(), python="py")
    assert [p.name for p in plan.processes] == ["router/front"]
    (pool,) = plan.on_demand
    assert [p.name for p in pool.processes] == ["engine/smol-0"] and pool.autoscaling.idle_seconds == IDLE_S
    assert pool.demand_urls == (plan.endpoints["front"].removesuffix("/v1") + "/shoal/demand",)
    config = yaml.safe_load(next(t for p, t in plan.files.items() if p.name == "router.yaml"))
    assert config["pools"][0]["coldStart"] and config["pools"][0]["endpoints"]["static"] == [pool.processes[0].url]
    assert any("start on the first request" in n for n in plan.notes)


def test_without_a_router_the_pool_runs_always(tmp_path: Path) -> None:
    plan = plan_stack(load_stack([write(tmp_path / "m", POOL)]), tmp_path, free_ports(), python="py")
    assert [p.name for p in plan.processes] == ["engine/smol-0"] and not plan.on_demand
    assert any("needs a Router in front" in n for n in plan.notes)


def _engines(up: Up) -> list[dict[str, Any]]:
    state = RunState.read(up.state)
    return [p for p in (state.processes if state else []) if p["name"].startswith("engine/")]


@pytest.mark.integration
@pytest.mark.slow  # waits out the 10 s idle time
def test_engine_starts_on_the_first_request_and_stops_when_idle(tmp_path: Path) -> None:
    up = Up(tmp_path, write(tmp_path / "m", POOL, ROUTER), "--engine-module", "support.fake_engine")
    try:
        state = up.wait_ready()
        assert [p["name"] for p in state.processes] == ["router/front"]  # nothing runs the model yet
        url = state.endpoints["front"]
        with httpx.Client(timeout=60, trust_env=False) as client:
            first = client.post(f"{url}/chat/completions", json=BODY)  # held until the engine is up
            assert first.status_code == 200 and first.json()["choices"][0]["message"]["content"] == "Paris."
            (engine,) = _engines(up)
            assert pid_alive(engine["pid"])
            assert "ModelPool smol: a request is waiting; started 1 engine(s)" in up.text()
            assert client.post(f"{url}/chat/completions", json=BODY).status_code == 200  # warm

            wait_for(lambda: not _engines(up), IDLE_S + 15, 0.2, "the engine to stop after the idle time")
            assert_gone([engine["pid"]])
            assert f"ModelPool smol: no request for {IDLE_S}s; engines stopped" in up.text()
            assert up.proc.poll() is None  # shoal up itself keeps serving

            again = client.post(f"{url}/chat/completions", json=BODY)  # from zero again
            assert again.status_code == 200
            (engine,) = _engines(up)
        down = up.cli("down")
        assert down.returncode == 0 and up.proc.wait(30) == 0
        assert_gone([engine["pid"], state.pid])
    finally:
        up.kill()
