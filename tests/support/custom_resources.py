"""Custom resources as the operator tests write them, and what they read back from kmock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from shoal.operator.kube import DEPLOYMENTS
from support.api import Api, condition

EXAMPLES = Path(__file__).resolve().parents[2] / "crds" / "examples"


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def pool(name: str, **spec: Any) -> dict[str, Any]:
    base = {"model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": f"{name}-model"}, "replicas": 1}
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelPool", "metadata": {"name": name},
            "spec": {**base, **spec}}  # fmt: skip


def router(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "Router", "metadata": {"name": name}, "spec": spec}


def program(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "AgentProgram", "metadata": {"name": name}, "spec": spec}


def reason_of(api: Api, rt: Any, ns: str, name: str, type_: str = "Degraded") -> str | None:
    c = condition(api.get(rt, ns, name), type_)
    return c["reason"] if c and (type_ != "Degraded" or c["status"] == "True") else None


def config_hash(api: Api, ns: str, router_name: str) -> str | None:
    dep = api.get(DEPLOYMENTS, ns, f"{router_name}-router")
    return dep["spec"]["template"]["metadata"]["annotations"]["shoal.dev/config-hash"] if dep else None
