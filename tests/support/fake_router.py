"""A stand-in for every router of a kmock cluster: answers ``GET /v1/programs/classes``.

Kubernetes would mount a Router's classes ConfigMap into its pods and the router would reload
the file; here each request reads that ConfigMap from the API server (as the kubelet would) and
validates it with the router's own ``ProgramClassesFile``, so a class is reported only once it
really is in the router's classes file. The operator reaches router ``NS/NAME`` at
``{url}/NS/NAME`` (``SHOAL_ROUTER_URL_TEMPLATE=url_template``). Tests set program counts per
class, can hold a router's reload back (``frozen``) to see a class that is not loaded yet, or
send a router's requests to a real router process (``real``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import yaml

from shoal.operator.builders.router_config import CLASSES_KEY
from shoal.operator.kube import CONFIGMAPS
from shoal.operator.router_classes import CLASSES_PATH
from shoal.router.programs.config import ProgramClassConfig, ProgramClassesFile


@dataclass
class FakeRouters:
    """What the fake routers report; mutate from tests (guarded by ``lock``)."""

    api_url: str
    counts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    """(namespace, class) -> {"active", "paused", "queued", "steps_per_minute"}."""
    frozen: dict[tuple[str, str], list[ProgramClassConfig]] = field(default_factory=dict)
    """(namespace, router) -> the classes it keeps reporting (its reload is held back)."""
    real: dict[tuple[str, str], str] = field(default_factory=dict)
    """(namespace, router) -> URL of a real router process to ask instead."""
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Pod IP -> what that router replica answers (asked for routers with several replicas)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def loaded(self, namespace: str, router: str) -> list[ProgramClassConfig] | None:
        """The classes in the router's classes ConfigMap; None when there is none."""
        with self.lock:
            if (namespace, router) in self.frozen:
                return list(self.frozen[(namespace, router)])
        resp = httpx.get(self.api_url + CONFIGMAPS.path(namespace, f"{router}-router-classes"), timeout=5)
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        text = resp.json().get("data", {}).get(CLASSES_KEY, "")
        return list(ProgramClassesFile.model_validate(yaml.safe_load(text) or {}).classes)

    def answer(self, namespace: str, router: str, authorization: str | None = None) -> tuple[int, dict[str, Any]]:
        with self.lock:
            real = self.real.get((namespace, router))
        if real is not None:
            headers = {"Authorization": authorization} if authorization else {}
            resp = httpx.get(real + CLASSES_PATH, headers=headers, timeout=5)
            return resp.status_code, resp.json()
        classes = self.loaded(namespace, router)
        if classes is None:
            return 503, {"error": {"message": "router not started: no classes ConfigMap", "type": "unavailable"}}
        with self.lock:
            data = [
                {"name": c.name, "model": c.model, "priority": c.priority,
                 "max_concurrent_programs": c.max_concurrent_programs, "lease_seconds": c.lease_seconds,
                 "tools": [t.name for t in c.tools], "active": 0, "paused": 0, "queued": 0, "steps_per_minute": 0.0,
                 **self.counts.get((namespace, c.name), {})}
                for c in classes
            ]  # fmt: skip
        return 200, {"object": "list", "data": data, "error": None}


class FakeRouterServer:
    """FakeRouters over HTTP on 127.0.0.1 (a background thread); use as a context manager."""

    def __init__(self, api_url: str) -> None:
        self.routers = FakeRouters(api_url)
        routers = self.routers

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) == 5 and parts[0] == "pods" and parts[2:] == ["v1", "programs", "classes"]:
                    with routers.lock:
                        replica = routers.pods.get(parts[1])
                    status, payload = (200, replica) if replica is not None else (503, {"error": "no such pod"})
                elif len(parts) == 5 and parts[2:] == ["v1", "programs", "classes"]:
                    status, payload = routers.answer(parts[0], parts[1], self.headers.get("Authorization"))
                else:
                    status, payload = 404, {"error": {"message": f"no route {self.path}", "type": "not_found"}}
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-router", daemon=True)

    @property
    def url_template(self) -> str:
        """The operator's ``SHOAL_ROUTER_URL_TEMPLATE`` for these routers."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/{{namespace}}/{{name}}"

    @property
    def pod_url_template(self) -> str:
        """The operator's ``SHOAL_ROUTER_POD_URL_TEMPLATE`` for the replicas in ``pods``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/pods/{{pod_ip}}"

    def __enter__(self) -> FakeRouterServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
