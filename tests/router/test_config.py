"""Router config validation and schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from shoal.router.config import RouterConfig, load_config

BASE: dict[str, Any] = {"pools": [{"name": "chat", "models": ["m"], "endpoints": {"static": ["http://a:1"]}}]}


def with_(**kw: Any) -> dict[str, Any]:
    return {**BASE, **kw}


def test_defaults_and_round_trip(tmp_path: Path) -> None:
    cfg = RouterConfig.model_validate(BASE)
    assert cfg.listen.port == 8080
    assert [f.type for f in cfg.picking.filters] == ["healthy", "serves-model", "not-saturated"]
    assert cfg.picking.prefix.mode == "approximate"
    assert cfg.pools[0].tokenizer.source == "engine"
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(cfg.to_yaml_dict()))
    assert load_config(path) == cfg


def test_snake_case_is_accepted_too() -> None:
    cfg = RouterConfig.model_validate(with_(rate_limits={"default": {"requests_per_second": 1, "burst": 2}}))
    assert cfg.rate_limits.default is not None and cfg.rate_limits.default.burst == 2


def test_plugin_shorthand_and_params() -> None:
    cfg = RouterConfig.model_validate(
        with_(picking={"filters": ["healthy"], "scorers": ["queue-depth", {"type": "kv-usage", "weight": 2,
              "params": {"unknownScore": 0.1}}], "picker": "round-robin"})
    )
    assert cfg.picking.scorers[1].weight == 2
    assert cfg.picking.picker.type == "round-robin"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (with_(bogus=1), "bogus"),
        (with_(picking={"scorers": ["nope"]}), "unknown scorer 'nope'"),
        (with_(picking={"scorers": [{"type": "kv-usage", "params": {"x": 1}}]}), "invalid params"),
        (with_(picking={"filters": ["queue-depth"]}), "unknown filter"),
        ({"pools": [{"name": "Bad_Name", "models": ["m"], "endpoints": {"static": []}}]}, "name"),
        ({"pools": [{"name": "a", "models": ["m"], "endpoints": {}}]}, "exactly one"),
        ({"pools": [{"name": "a", "models": ["m"], "endpoints": {"static": ["http://x:1/v1"]}}]}, "without /v1"),
        ({"pools": [{"name": "a", "models": ["m"], "endpoints": {"static": ["ftp://x"]}}]}, "URL"),
        ({"pools": [*BASE["pools"], {"name": "b", "models": ["m"], "endpoints": {"static": ["http://b:1"]}}]},
         "claimed by both"),
        (with_(routes=[{"model": "x", "pool": "missing"}]), "unknown pool"),
        (with_(routes=[{"model": "x", "pool": "chat", "split": [{"pool": "chat", "weight": 1}]}]), "exactly one"),
        (with_(routes=[{"model": "x", "pool": "chat", "rules": [{"regex": "(", "pool": "chat"}]}]), "invalid regex"),
        (with_(routes=[{"model": "x", "pool": "chat", "rules": [{"pool": "chat"}]}]), "keywords"),
        (with_(circuitBreaker={"ejectS": 10, "maxEjectS": 1}), "maxEjectS"),
        (with_(programs={"anything": 1}), "anything"),
        ({"pools": [{"name": "a", "models": ["m"], "endpoints": {"kubernetes": {"namespace": "x"}}}]}, "label"),
        ({"pools": []}, "pools"),
    ],
)
def test_invalid_configs_are_rejected(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as err:
        RouterConfig.model_validate(data)
    assert needle.lower() in str(err.value).lower()


def test_json_schema_is_camel_case_and_strict() -> None:
    schema = RouterConfig.json_schema()
    assert {"pools", "rateLimits", "circuitBreaker", "programs"} <= set(schema["properties"])
    assert schema.get("additionalProperties") is False
    pool = schema["$defs"]["PoolConfig"]
    assert pool["additionalProperties"] is False
    assert "description" in pool["properties"]["models"]
    k8s = schema["$defs"]["KubernetesEndpoints"]["properties"]
    assert "labelSelector" in k8s
