"""Scale from zero in a (kmock) cluster: the real operator, a real router, a stand-in engine.

The router runs in this process with the pool's coldStart hold and a static endpoint where the
engine's pod will listen; the operator (its own ``shoal operator`` process, polling fast) reads
that router's ``/shoal/demand``. kmock has no controllers: the test plays the kubelet and starts
the engine once the Deployment asks for a replica.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

from shoal.operator.kube import CONFIGMAPS, DEPLOYMENTS, EVENTS, HPAS, MODELPOOLS
from shoal.operator.local_runtime import free_ports
from shoal.router.app import create_app
from shoal.router.config import RouterConfig
from shoal.router.server import uvicorn_settings
from support.api import REPO_ROOT, Api, OperatorProcess, wait_for
from support.processes import wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # its own operator process and a 10 s idle time: ~20 s
NS = "coldstart"
IDLE_S = 10  # the least scaleToZeroAfterSeconds allows


class ThreadRouter:
    """The real router app served by uvicorn on a background thread."""

    def __init__(self, cfg: RouterConfig, port: int) -> None:
        config = uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=1, **uvicorn_settings(cfg))  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ThreadRouter:
        self.thread.start()
        wait_for(lambda: self.server.started, 20, what="router start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, api: Api) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("coldstart")
    ports = free_ports()
    router_port, engine_port = next(ports), next(ports)
    ports.close()  # frees both
    cfg = RouterConfig.model_validate({
        "pools": [{"name": "chat", "models": ["chat-model"], "endpoints": {"static": [f"http://127.0.0.1:{engine_port}"]},
                   "tokenizer": {"source": "none"}, "coldStart": {"maxWaiting": 4, "timeoutS": 60}}],
        "health": {"scrapeIntervalS": 0.1},
        "circuitBreaker": {"ejectS": 0.2, "maxEjectS": 0.5},
    })  # fmt: skip
    yield {"tmp": tmp, "cfg": cfg, "router_port": router_port, "engine_port": engine_port}


def _pool(replicas: int) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelPool", "metadata": {"name": "chat"},
            "spec": {"model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": "chat-model"},
                     "replicas": replicas,
                     "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "scaleToZeroAfterSeconds": IDLE_S}}}  # fmt: skip


def _router() -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "Router", "metadata": {"name": "front"},
            "spec": {"pools": [{"name": "chat"}]}}  # fmt: skip


def _start_engine(log: Path, port: int) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "support.fake_engine", "serve", "--model", "m", "--served-model-name",
             "chat-model", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT / "tests",
        )  # fmt: skip


def _replicas(api: Api, rt: Any, name: str) -> int | None:
    obj = api.get(rt, NS, name)
    return None if obj is None else int(obj["spec"].get("replicas", 1))


def test_pool_at_zero_scales_up_for_a_held_request_and_back_down_when_idle(
    api: Api, cluster: Any, stack: dict[str, Any]
) -> None:
    tmp: Path = stack["tmp"]
    env = {"SHOAL_ROUTER_URL_TEMPLATE": f"http://127.0.0.1:{stack['router_port']}",
           "SHOAL_SCALE_FROM_ZERO_INTERVAL": "0.2"}  # fmt: skip
    with ThreadRouter(stack["cfg"], stack["router_port"]) as router, \
            OperatorProcess(cluster.kubeconfig, tmp / "operator.log", env) as op:  # fmt: skip
        wait_for(lambda: "Activity 'startup' succeeded" in op.log() or not op.alive(), 60, what="operator startup")
        api.create(_pool(replicas=0), NS)
        api.create(_router(), NS)
        wait_for(lambda: _replicas(api, DEPLOYMENTS, "chat-engine") == 0, what="the engine Deployment at zero")
        hpa = wait_for(lambda: api.get(HPAS, NS, "chat-engine"), what="HPA")
        assert hpa["spec"]["minReplicas"] == 1  # the HPA never goes to 0; at 0 it stands still
        # The operator tells the router to hold this pool's requests at zero.
        config = wait_for(lambda: api.get(CONFIGMAPS, NS, "front-router"), what="router ConfigMap")
        pools = yaml.safe_load(config["data"]["router.yaml"])["pools"]
        assert pools[0]["name"] == "chat" and "coldStart" in pools[0]

        with httpx.Client(base_url=router.url, timeout=60) as client:
            result: dict[str, httpx.Response] = {}
            body = {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            held = threading.Thread(
                target=lambda: result.update(r=client.post("/v1/chat/completions", json=body)), daemon=True
            )
            held.start()

            # The held request is the demand: the operator scales the pool (scale subresource) to 1.
            wait_for(lambda: _replicas(api, MODELPOOLS, "chat") == 1, 20, what="ModelPool scaled to 1")
            wait_for(lambda: _replicas(api, DEPLOYMENTS, "chat-engine") == 1, 20, what="Deployment scaled to 1")
            assert held.is_alive()  # still waiting: no engine yet
            events = [e for e in api.list(EVENTS, NS) if e["involvedObject"]["name"] == "chat"]
            assert any(e["reason"] == "ScaledFromZero" and "1 request(s) held" in e["message"] for e in events)

            # The kubelet starts the pod: the router releases the request to it.
            engine = _start_engine(tmp / "engine.log", stack["engine_port"])
            try:
                wait_healthy(f"http://127.0.0.1:{stack['engine_port']}", engine, tmp / "engine.log", 30)
                held.join(30)
                assert result["r"].status_code == 200, result["r"].text
                assert result["r"].json()["choices"][0]["message"]["content"] == "Paris."

                # No more requests: after the idle time the pool returns to zero.
                wait_for(lambda: _replicas(api, MODELPOOLS, "chat") == 0, IDLE_S + 15, what="ModelPool back at 0")
                wait_for(lambda: _replicas(api, DEPLOYMENTS, "chat-engine") == 0, 20, what="Deployment back at 0")
                events = [e for e in api.list(EVENTS, NS) if e["involvedObject"]["name"] == "chat"]
                assert any(e["reason"] == "ScaledToZero" for e in events)
            finally:
                engine.terminate()
                engine.wait(10)

            # At zero again, a flood past the router's bound is refused at once with Retry-After.
            answers: list[int] = []
            waiting = [threading.Thread(target=lambda: answers.append(client.post("/v1/chat/completions",
                                        json=body).status_code), daemon=True) for _ in range(4)]  # fmt: skip
            for t in waiting:
                t.start()
            wait_for(lambda: client.get("/shoal/demand").json()["pools"][0]["waiting"] == 4, what="4 held")
            flood = [client.post("/v1/chat/completions", json=body) for _ in range(10)]
            assert {r.status_code for r in flood} == {503} and all(r.headers["retry-after"] for r in flood)
            wait_for(lambda: _replicas(api, MODELPOOLS, "chat") == 1, 20, what="scaled up again for the held ones")
            engine = _start_engine(tmp / "engine2.log", stack["engine_port"])
            try:
                for t in waiting:
                    t.join(30)
                assert answers == [200] * 4
            finally:
                engine.terminate()
                engine.wait(10)
        assert op.alive(), op.log()[-3000:]
