"""Router custom resource + the pools it serves -> router.yaml (validated by shoal.router.config).

The spec's router settings are serialized as they are (they are the router's own model); this
module adds only what the operator knows: the pools' served models and replicas, where Secrets
are mounted, the program classes file and how replicas find each other."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from shoal.crds import ModelPoolSpec, Reason, RouterSpec
from shoal.crds.modelpool import SecretKeyRef
from shoal.operator.builders.program_class import classes_yaml
from shoal.router.config import RouterConfig, RouterSettings
from shoal.router.programs.config import ProgramClassConfig

EndpointsFor = Callable[[str], dict[str, Any]]
"""Pool name -> the router's ``endpoints`` entry for that pool (static URLs or Kubernetes discovery)."""

API_KEYS_DIR = "/etc/shoal/api-keys"
CLASSES_DIR = "/etc/shoal/router-classes"
CLASSES_KEY = "classes.yaml"
UPSTREAM_KEY_ENV = "SHOAL_UPSTREAM_API_KEY"
PEER_SECRET_ENV = "SHOAL_PEER_SECRET"
"""The secret router replicas prove a forwarded program call with (``programs.forwardedSecretEnv``)."""


class RenderError(Exception):
    """The router config cannot be rendered; ``reason`` is the condition reason."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class RenderedConfig:
    """A router's configuration: ``router.yaml`` (read at start, hashed: a change rolls the pods)
    and the program classes file (re-read live by the router, never hashed)."""

    router_yaml: str
    classes: tuple[ProgramClassConfig, ...] = ()
    """The AgentPrograms' classes, in the classes file."""
    upstream_key: SecretKeyRef | None = None
    """The engines' API key, which the router sends upstream (env ``UPSTREAM_KEY_ENV``)."""

    @property
    def classes_yaml(self) -> str:
        return classes_yaml(self.classes)

    @property
    def image_sandboxes(self) -> bool:
        """Some class runs its sandboxes as pods (the router then needs RBAC for them)."""
        return any(c.sandbox is not None and c.sandbox.image is not None for c in self.classes)

    def data(self) -> dict[str, str]:
        """The router ConfigMap's data (what the pod template's config hash covers)."""
        return {"router.yaml": self.router_yaml}

    def classes_data(self) -> dict[str, str]:
        """The classes ConfigMap's data."""
        return {CLASSES_KEY: self.classes_yaml}


def kubernetes_endpoints(namespace: str) -> EndpointsFor:
    """In a cluster the router watches each pool's ready engine pods."""
    from shoal.operator.builders.common import ENGINE_PORT, LABEL_COMPONENT, LABEL_POOL

    def endpoints(pool: str) -> dict[str, Any]:
        selector = f"{LABEL_POOL}={pool},{LABEL_COMPONENT}=engine"
        return {"kubernetes": {"namespace": namespace, "labelSelector": selector, "resource": "pods", "port": ENGINE_PORT}}

    return endpoints


def kubernetes_peers(namespace: str, router: str) -> dict[str, Any]:
    """Router replicas find each other as the Router's ready pods (program ownership by hashing);
    each replica's own URL comes from its ``POD_IP`` (downward API)."""
    from shoal.operator.builders.common import LABEL_COMPONENT, LABEL_ROUTER, ROUTER_PORT

    selector = f"{LABEL_ROUTER}={router},{LABEL_COMPONENT}=router"
    return {"kubernetes": {"namespace": namespace, "labelSelector": selector, "resource": "pods", "port": ROUTER_PORT}}


def render_router_config(
    spec: RouterSpec,
    pools: Mapping[str, ModelPoolSpec | None],
    endpoints_for: EndpointsFor,
    *,
    host: str = "0.0.0.0",
    port: int = 8080,
    api_keys_path: str | None = None,
    classes_file: str = f"{CLASSES_DIR}/{CLASSES_KEY}",
    upstream_key_env: str | None = None,
    peers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The router config as a camelCase dict, validated by ``RouterConfig``.

    ``pools`` maps every pool the router names to its spec, or None when no such ModelPool exists.
    ``peers`` is how replicas find each other; rendered only with more than one replica (one
    replica owns every program, and needs no membership).
    Raises RenderError (PoolNotFound, ConfigInvalid).
    """
    missing = [p.name for p in spec.pools if pools.get(p.name) is None]
    if missing:
        raise RenderError(Reason.POOL_NOT_FOUND, f"ModelPool not found: {', '.join(missing)}")
    # The spec's router settings are router.yaml's as they are; the operator adds only the wiring.
    raw: dict[str, Any] = spec.model_dump(
        mode="json", by_alias=True, exclude_none=True,
        include=set(RouterSettings.model_fields), exclude={"auth": {"api_keys_secret"}},
    )  # fmt: skip
    raw["listen"] = {"host": host, "port": port}
    raw["pools"] = [
        {
            **ref.model_dump(mode="json", by_alias=True, exclude_none=True),
            "models": [pool.model.served_model_name],
            "endpoints": endpoints_for(ref.name),
            # A pool that scales to zero: the router holds its requests while it has no engine.
            **({"coldStart": {}} if pool.autoscaling is not None and pool.autoscaling.min_replicas == 0 else {}),
        }
        for ref in spec.pools
        if (pool := pools[ref.name]) is not None
    ]
    forwarding = peers is not None and spec.replicas > 1
    raw["programs"] = {
        **raw["programs"],
        "classesFile": classes_file,
        **({"forwardedSecretEnv": PEER_SECRET_ENV} if forwarding else {}),
    }
    if spec.auth is not None:
        raw["auth"]["apiKeysFile"] = api_keys_path or API_KEYS_DIR
    if upstream_key_env is not None:
        raw["upstream"] = {"apiKeyEnv": upstream_key_env}
    if forwarding and peers is not None:
        raw["peers"] = {**raw.get("peers", {}), **peers}
    else:
        raw.pop("peers", None)
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


def render(
    spec: RouterSpec,
    pools: Mapping[str, ModelPoolSpec | None],
    classes: Iterable[ProgramClassConfig],
    endpoints_for: EndpointsFor,
    **listen: Any,
) -> RenderedConfig:
    """router.yaml plus the classes file of the AgentPrograms that name this router."""
    upstream = upstream_key(spec, pools)
    config = render_router_config(spec, pools, endpoints_for, upstream_key_env=upstream and UPSTREAM_KEY_ENV, **listen)
    return RenderedConfig(yaml.safe_dump(config, sort_keys=False), tuple(classes), upstream)


def upstream_key(spec: RouterSpec, pools: Mapping[str, ModelPoolSpec | None]) -> SecretKeyRef | None:
    """The engine API key of the router's pools: one credential per router, so pools must share it."""
    keys = {
        (auth.api_key_secret_ref.name, auth.api_key_secret_ref.key): auth.api_key_secret_ref
        for ref in spec.pools
        if (pool := pools.get(ref.name)) is not None and (auth := pool.engine.auth) is not None
    }
    if len(keys) > 1:
        names = ", ".join(f"{name}/{key}" for name, key in sorted(keys))
        raise RenderError(
            Reason.CONFIG_INVALID, f"the router's pools use different engine API keys ({names}): a router has one"
        )
    return next(iter(keys.values()), None)
