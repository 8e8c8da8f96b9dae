"""Router custom resource + the pools it serves -> router.yaml (validated by shoal.router.config)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from shoal.crds import AgentProgramSpec, ModelPoolSpec, Reason, RouterSpec
from shoal.crds.router import Plugin
from shoal.router.config import RouterConfig

EndpointsFor = Callable[[str], dict[str, Any]]
"""Pool name -> the router's ``endpoints`` entry for that pool (static URLs or Kubernetes discovery)."""

API_KEYS_DIR = "/etc/shoal/api-keys"


class RenderError(Exception):
    """The router config cannot be rendered; ``reason`` is the condition reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class RenderedConfig:
    """The files of a router's ConfigMap."""

    router_yaml: str
    programs_yaml: str

    def data(self) -> dict[str, str]:
        return {"router.yaml": self.router_yaml, "programs.yaml": self.programs_yaml}


def kubernetes_endpoints(namespace: str) -> EndpointsFor:
    """In a cluster the router watches each pool's ready engine pods."""
    from shoal.operator.builders.common import ENGINE_PORT, LABEL_COMPONENT, LABEL_POOL

    def endpoints(pool: str) -> dict[str, Any]:
        selector = f"{LABEL_POOL}={pool},{LABEL_COMPONENT}=engine"
        return {"kubernetes": {"namespace": namespace, "labelSelector": selector, "resource": "pods", "port": ENGINE_PORT}}

    return endpoints


def _plugin(p: Plugin) -> dict[str, Any]:
    out: dict[str, Any] = {"type": p.type, "weight": p.weight}
    if p.params:
        out["params"] = dict(p.params)
    return out


def _picking(spec: RouterSpec) -> dict[str, Any]:
    picking: dict[str, Any] = {"prefix": {"mode": spec.picking.prefix_mode}}
    if spec.picking.filters:
        picking["filters"] = [{k: v for k, v in _plugin(p).items() if k != "weight"} for p in spec.picking.filters]
    if spec.picking.scorers:
        picking["scorers"] = [_plugin(p) for p in spec.picking.scorers]
    if spec.picking.picker is not None:
        picking["picker"] = {k: v for k, v in _plugin(spec.picking.picker).items() if k != "weight"}
    return picking


def _routes(spec: RouterSpec) -> list[dict[str, Any]]:
    routes = []
    for r in spec.routes or []:
        route: dict[str, Any] = {"model": r.model, "aliases": list(r.aliases or [])}
        if r.pool is not None:
            route["pool"] = r.pool
        else:
            route["split"] = [{"pool": t.pool, "weight": t.weight} for t in r.split or []]
        route["rules"] = [
            {"keywords": list(rule.keywords or []), "regex": rule.regex, "pool": rule.pool} for rule in r.rules or []
        ]
        routes.append(route)
    return routes


def render_router_config(
    spec: RouterSpec,
    pools: Mapping[str, ModelPoolSpec | None],
    endpoints_for: EndpointsFor,
    *,
    host: str = "0.0.0.0",
    port: int = 8080,
    api_keys_path: str | None = None,
) -> dict[str, Any]:
    """The router config as a camelCase dict, validated by ``RouterConfig``.

    ``pools`` maps every pool the router names to its spec, or None when no such ModelPool exists.
    Raises RenderError (PoolNotFound, ConfigInvalid).
    """
    missing = [p.name for p in spec.pools if pools.get(p.name) is None]
    if missing:
        raise RenderError(Reason.POOL_NOT_FOUND, f"ModelPool not found: {', '.join(missing)}")
    raw: dict[str, Any] = {
        "listen": {"host": host, "port": port},
        "pools": [
            {
                "name": ref.name,
                "models": [pool.model.served_model_name],
                "aliases": list(ref.aliases or []),
                "endpoints": endpoints_for(ref.name),
            }
            for ref in spec.pools
            if (pool := pools[ref.name]) is not None
        ],
        "routes": _routes(spec),
        "picking": _picking(spec),
        "logLevel": spec.log_level,
    }
    if spec.auth is not None:
        raw["auth"] = {"apiKeysFile": api_keys_path or API_KEYS_DIR}
    if spec.rate_limits is not None:
        raw["rateLimits"] = spec.rate_limits.model_dump(by_alias=True, exclude_none=True)
    try:
        return RouterConfig.model_validate(raw).to_yaml_dict()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RenderError(Reason.CONFIG_INVALID, f"router config {where or '(root)'}: {first['msg']}") from None


def served_models(spec: RouterSpec, pools: Mapping[str, ModelPoolSpec | None]) -> set[str]:
    """Every model name the router answers to."""
    names = {r.model for r in spec.routes or []} | {a for r in spec.routes or [] for a in r.aliases or []}
    for ref in spec.pools:
        pool = pools.get(ref.name)
        if pool is not None:
            names |= {pool.model.served_model_name, *(ref.aliases or [])}
    return names


def programs_document(spec: RouterSpec, programs: Mapping[str, AgentProgramSpec]) -> dict[str, Any]:
    """Program-scheduling settings plus the AgentProgram classes that name this router."""
    return {
        "scheduling": spec.programs.model_dump(by_alias=True, mode="json"),
        "programs": [
            {"name": name, **p.model_dump(by_alias=True, mode="json", exclude_none=True, exclude={"router"})}
            for name, p in sorted(programs.items())
        ],
    }


def render(
    spec: RouterSpec,
    pools: Mapping[str, ModelPoolSpec | None],
    programs: Mapping[str, AgentProgramSpec],
    endpoints_for: EndpointsFor,
    **listen: Any,
) -> RenderedConfig:
    """Both files of the router's configuration."""
    config = render_router_config(spec, pools, endpoints_for, **listen)
    return RenderedConfig(
        router_yaml=yaml.safe_dump(config, sort_keys=False),
        programs_yaml=yaml.safe_dump(programs_document(spec, programs), sort_keys=False),
    )
