"""Every router setting is reachable from the Router resource and reaches router.yaml unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from shoal.crds import ModelPoolSpec, Reason, RouterSpec
from shoal.crds.schema import openapi_schema
from shoal.operator.builders.router_config import kubernetes_endpoints, kubernetes_peers, render
from shoal.router.config import RouterConfig

POOLS = {
    name: ModelPoolSpec.model_validate({"model": {"uri": "bundled:smollm2-135m-instruct", "servedModelName": model}})
    for name, model in (("chat", "smol"), ("big", "large"))
}
PLUGINS: dict[str, Any] = {
    "filters": [{"type": "healthy"}, {"type": "not-saturated", "weight": 0.5, "params": {"maxWaiting": 7}}],
    "scorers": [{"type": "prefix-affinity", "weight": 5, "params": {"loadSlack": 2}}, {"type": "queue-depth"}],
    "picker": {"type": "max-score", "weight": 2, "params": {"tieEpsilon": 0.01}},
    "prefix": {"mode": "precise", "lruBlocksPerEndpoint": 1000, "digestIntervalS": 0.25, "blockSize": 32},
}
ROUTER_SETTINGS: dict[str, Any] = {
    "pools": [
        {"name": "chat", "aliases": ["small"], "tokenizer": {"source": "none"}, "picking": PLUGINS},
        {"name": "big", "tokenizer": {"source": "file", "path": "/etc/shoal/tokenizer.json"}},
    ],
    "routes": [
        {"model": "auto", "aliases": ["any"], "pool": "chat",
         "rules": [{"keywords": ["proof"], "regex": "theorem \\d+", "pool": "big"}]},
        {"model": "ab", "split": [{"pool": "chat", "weight": 3}, {"pool": "big", "weight": 1}]},
    ],
    "picking": PLUGINS,
    "auth": {"reloadIntervalS": 3, "priorityKeys": ["ops"]},
    "rateLimits": {
        "default": {"requestsPerSecond": 5, "burst": 10, "tokensPerSecond": 1000, "tokenBurst": 4000},
        "perKey": {"ops": {"requestsPerSecond": 50, "burst": 100}},
    },
    "timeouts": {"connectS": 1.5, "firstByteS": 90, "idleS": 45, "totalS": 300, "clientHeaderS": 5,
                 "clientBodyS": 20, "clientKeepAliveS": 15},
    "retries": {"maxAttempts": 5, "retryOnServerErrors": False, "maxServerErrorRetries": 2, "retryOnFull": False},
    "circuitBreaker": {"consecutiveFailures": 4, "ejectS": 3, "maxEjectS": 40},
    "health": {"scrapeIntervalS": 0.75, "staleAfterS": 4, "modelsIntervalS": 20, "probeTimeoutS": 0.5},
    "limits": {"maxBodyBytes": 1 << 20, "maxHeaderBytes": 16384, "maxHeaderCount": 50,
               "maxTokenizedPromptBytes": 65536, "maxConnections": 512, "maxKeepaliveConnections": 128},
    "programs": {"reloadIntervalS": 1, "highWatermark": 0.8, "lowWatermark": 0.6, "tickS": 0.25, "maxWaitS": 30,
                 "retentionMaxS": 45, "retentionDefaultS": 3, "retentionBreakEvenS": 12, "prewarmQueueDepth": 5,
                 "countForeignLoad": False},
    "peers": {"healthIntervalS": 2, "downAfterFailures": 3, "probeTimeoutS": 0.75},
    "tenancy": {"cacheSharing": "shared", "tenantHeader": "x-team"},
    "logLevel": "debug",
}  # fmt: skip
KUBERNETES_FIELDS: dict[str, Any] = {
    "auth": {"apiKeysSecret": {"name": "keys"}},
    "replicas": 2,
    "image": "example/router:1",
    "resources": {"requests": {"cpu": "1"}},
    "service": {"type": "NodePort", "port": 8081},
}
KUBERNETES_PATHS = {"auth.apiKeysSecret.name", "replicas", "image", "resources.requests", "resources.limits",
                    "service.type", "service.port"}  # fmt: skip


def leaves(node: Any, path: str = "") -> dict[str, Any]:
    """``{dotted.path[i]: value}`` of every scalar, list of scalars and free-form mapping."""
    if isinstance(node, dict) and node and not path.endswith(("params", "perKey")):
        return {k: v for key, sub in node.items() for k, v in leaves(sub, f"{path}.{key}".lstrip(".")).items()}
    if isinstance(node, list) and node and isinstance(node[0], dict):
        return {k: v for i, sub in enumerate(node) for k, v in leaves(sub, f"{path}[{i}]").items()}
    return {path: node}


def schema_leaves(node: dict[str, Any], path: str = "") -> set[str]:
    """Every settable leaf of a CRD schema (list items as ``[]``; free-form mappings are leaves)."""
    if node.get("type") == "object" and "properties" in node:
        return {leaf for key, sub in node["properties"].items() for leaf in schema_leaves(sub, f"{path}.{key}".lstrip("."))}
    if node.get("type") == "array" and "properties" in node.get("items", {}):
        return schema_leaves(node["items"], f"{path}[]")
    return {path}


def rendered_config(spec: dict[str, Any]) -> dict[str, Any]:
    router = RouterSpec.model_validate(spec)
    rendered = render(router, POOLS, [], kubernetes_endpoints("team"), peers=kubernetes_peers("team", "front"))
    config: dict[str, Any] = yaml.safe_load(rendered.router_yaml)
    RouterConfig.model_validate(config)  # what the router will load
    return config


def test_the_settings_below_set_every_router_setting_of_the_crd() -> None:
    # A new router setting must be added to ROUTER_SETTINGS, so the next test proves it reaches router.yaml.
    settable = schema_leaves(openapi_schema(RouterSpec)) - KUBERNETES_PATHS
    covered = {path.split("[")[0] + "".join("[]" + p.split("]", 1)[1] for p in path.split("[")[1:]) for path in
               leaves(ROUTER_SETTINGS)}  # fmt: skip
    assert settable - covered == set()


def test_every_router_setting_in_the_router_resource_reaches_router_yaml() -> None:
    config = rendered_config({**ROUTER_SETTINGS, **KUBERNETES_FIELDS, "auth": {**ROUTER_SETTINGS["auth"],
                                                                             **KUBERNETES_FIELDS["auth"]}})  # fmt: skip
    got = leaves(config)
    wrong = {path: (value, got.get(path)) for path, value in leaves(ROUTER_SETTINGS).items() if got.get(path) != value}
    assert wrong == {}
    # The ones the issue names, read back through the router's own model.
    router = RouterConfig.model_validate(config)
    assert (router.timeouts.first_byte_s, router.retries.max_attempts, router.circuit_breaker.eject_s) == (90, 5, 3)
    assert (router.health.scrape_interval_s, router.pools[0].tokenizer.source) == (0.75, "none")
    assert [f.weight for f in router.picking.filters] == [1.0, 0.5] and router.picking.picker.weight == 2
    picking = router.picking_for(router.pools[0])
    assert picking.scorers[0].weight == 5 and picking.picker.params == {"tieEpsilon": 0.01}
    # The operator's wiring beside them; Kubernetes-only fields stay out.
    assert router.auth.api_keys_file == "/etc/shoal/api-keys" and router.auth.priority_keys == ["ops"]
    assert router.peers is not None and router.peers.kubernetes is not None and router.peers.down_after_failures == 3
    assert router.programs.classes_file is not None and router.programs.forwarded_secret_env == "SHOAL_PEER_SECRET"
    assert not {"replicas", "image", "resources", "service"} & set(config) and "apiKeysSecret" not in config["auth"]


def test_router_settings_keep_the_routers_validation() -> None:
    def reason(spec: dict[str, Any]) -> str:
        with pytest.raises(ValidationError) as err:
            RouterSpec.model_validate({"pools": [{"name": "chat"}], **spec})
        return str(err.value.errors()[0]["type"])

    assert reason({"picking": {"scorers": [{"type": "crystal-ball"}]}}) == "value_error"
    assert reason({"picking": {"filters": [{"type": "not-saturated", "params": {"maxWaitng": 1}}]}}) == "value_error"
    assert reason({"circuitBreaker": {"ejectS": 10, "maxEjectS": 5}}) == "value_error"
    assert reason({"pools": [{"name": "chat", "tokenizer": {"source": "file"}}]}) == "value_error"
    assert reason({"programs": {"highWatermark": 0.5, "lowWatermark": 0.7}}) == "value_error"
    assert reason({"routes": [{"model": "m"}]}) == Reason.ROUTES_INVALID.value
    assert reason({"timeouts": {"idleS": 0}}) == "greater_than"


def test_defaults_render_the_routers_defaults() -> None:
    config = rendered_config({"pools": [{"name": "chat"}]})
    defaults = RouterConfig.model_validate({"pools": [{"name": "chat", "models": ["smol"], "endpoints": {"static": [
        "http://e:1"]}}]}).to_yaml_dict()  # fmt: skip
    for section in ("picking", "timeouts", "retries", "circuitBreaker", "health", "limits", "tenancy", "rateLimits"):
        assert config[section] == defaults[section], section
    assert "auth" not in config or "apiKeysFile" not in config["auth"]
    assert "peers" not in config  # one replica owns every program
