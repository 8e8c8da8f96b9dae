"""Synchronous helpers for tests and benches: a tiny API client and the operator as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from shoal.operator.kube import ResourceType, resource_of

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "crds" / "generated"
CRDS = ResourceType("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions")


class Api:
    """Plain JSON calls against an API server (no auth: meant for the kmock emulator)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def close(self) -> None:
        self.http.close()

    def create(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        rt = resource_of(obj) if obj["kind"] != "CustomResourceDefinition" else CRDS
        ns = namespace or obj["metadata"].get("namespace") or ("default" if rt is not CRDS else None)
        if ns is not None:
            obj = {**obj, "metadata": {**obj["metadata"], "namespace": ns}}
        resp = self.http.post(rt.path(ns), json=obj)
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    def get(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        resp = self.http.get(rt.path(namespace, name))
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    def list(self, rt: ResourceType, namespace: str | None) -> list[dict[str, Any]]:
        resp = self.http.get(rt.path(namespace))
        if resp.status_code == 404:
            return []
        resp.raise_for_status()
        items: list[dict[str, Any]] = resp.json()["items"]
        return items

    def patch(self, rt: ResourceType, namespace: str, name: str, patch: dict[str, Any], *, status: bool = False) -> None:
        resp = self.http.patch(
            rt.path(namespace, name, "status" if status else None),
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        resp.raise_for_status()

    def delete(self, rt: ResourceType, namespace: str, name: str) -> None:
        self.http.delete(rt.path(namespace, name)).raise_for_status()

    def install_crds(self) -> None:
        for path in sorted(CRD_DIR.glob("*.yaml")):
            self.create(yaml.safe_load(path.read_text()))


def wait_for(probe: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``probe`` until it returns a truthy value; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or probe}")
        time.sleep(interval)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """The condition of that type in an object's status."""
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


class OperatorProcess:
    """``shoal operator`` as a subprocess against a kubeconfig; logs to a file."""

    def __init__(self, kubeconfig: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.extra_env}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.operator", "operator"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
