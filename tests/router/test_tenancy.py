"""Tenancy, router side (docs/contracts.md): the router's own upstream credential, trusted
headers only the router sets, per-tenant cache salt in the router's own hashes, priority gating."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from _fakes import FakeEngine
from test_proxy_fake import Harness, chat_body

from shoal.engine.block_hash import prefix_block_hashes
from shoal.router.config import RouterConfig, TenancyConfig, UpstreamConfig
from shoal.router.openai_request import parse_request
from shoal.router.tenancy import Tenancy, upstream_api_key
from shoal.router.tokenization import PromptHasher


def _keys(tmp: Path) -> dict[str, Any]:
    path = tmp / "keys"
    path.write_text("alice:sk-alice\nbob:sk-bob\n")
    return {"auth": {"apiKeysFile": str(path), "priorityKeys": ["bob"]}}


async def test_upstream_credential_on_data_and_control_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_KEY", "sk-engine")
    engine = FakeEngine("e0")
    cfg = {"upstream": {"apiKeyEnv": "ENGINE_KEY"}, **_keys(tmp_path)}
    async with Harness([engine], cfg) as h, httpx.AsyncClient(base_url=h.url) as c:
        r = await c.post("/v1/chat/completions", json=chat_body(), headers={"authorization": "Bearer sk-alice"})
        assert r.status_code == 200
    assert engine.headers_seen[0]["authorization"] == "Bearer sk-engine"  # never the client's key
    assert engine.control_headers_seen
    assert all(seen.get("authorization") == "Bearer sk-engine" for seen in engine.control_headers_seen)


async def test_trusted_headers_come_from_the_router_only(tmp_path: Path) -> None:
    engine = FakeEngine("e0")
    forged = {"x-shoal-tenant": "bob", "x-shoal-cache-salt": "bobs-salt", "x-shoal-priority": "99"}
    async with Harness([engine], _keys(tmp_path)) as h, httpx.AsyncClient(base_url=h.url) as c:
        for key in ("sk-alice", "sk-bob"):
            r = await c.post("/v1/chat/completions", json=chat_body(priority=5),
                             headers={"authorization": f"Bearer {key}", **forged})
            assert r.status_code == 200
    alice, bob = engine.headers_seen
    assert alice["x-shoal-tenant"] == "alice" and bob["x-shoal-tenant"] == "bob"
    assert alice["x-shoal-cache-salt"] not in {"", "bobs-salt", bob["x-shoal-cache-salt"], "sk-alice"}
    assert "x-shoal-priority" not in alice and "priority" not in engine.requests[0]  # alice may not set it
    assert bob["x-shoal-priority"] == "5"  # bob is in auth.priorityKeys


async def test_gateway_tenant_header_and_shared_cache() -> None:
    engine = FakeEngine("e0")
    cfg = {"tenancy": {"tenantHeader": "X-Tenant", "cacheSharing": "shared"}}
    async with Harness([engine], cfg) as h, httpx.AsyncClient(base_url=h.url) as c:
        assert (await c.post("/v1/chat/completions", json=chat_body(), headers={"x-tenant": "acme"})).status_code == 200
        assert (await c.post("/v1/chat/completions", json=chat_body())).status_code == 200
        for bad_tenant in ("a\tb", "x" * 300, "caf\u00e9"):
            bad = await c.post("/v1/chat/completions", json=chat_body(), headers={"x-tenant": bad_tenant.encode()})
            assert bad.status_code == 400, bad_tenant
    acme, anonymous = engine.headers_seen
    assert acme["x-shoal-tenant"] == "acme" and anonymous["x-shoal-tenant"] == "anonymous"
    assert acme["x-shoal-cache-salt"] == anonymous["x-shoal-cache-salt"] == ""


def test_router_hashes_use_the_tenant_salt_like_the_engine() -> None:
    tenancy = Tenancy(TenancyConfig(), salt_secret="s3cret")
    salt_a, salt_b = tenancy.salt("alice"), tenancy.salt("bob")
    assert salt_a != salt_b and tenancy.salt("alice") == salt_a
    assert Tenancy(TenancyConfig(), salt_secret="other").salt("alice") != salt_a  # keyed
    ids = list(range(64))
    req = parse_request("completion", b'{"model": "m", "prompt": ' + str(ids).encode() + b"}", {})
    hasher = PromptHasher(16, None)
    assert hasher.digest(req, salt_a).block_hashes == tuple(prefix_block_hashes(ids, 16, salt=salt_a))
    assert hasher.digest(req, salt_a).block_hashes != hasher.digest(req, salt_b).block_hashes


def test_upstream_key_sources(tmp_path: Path) -> None:
    assert upstream_api_key(UpstreamConfig()) is None
    assert upstream_api_key(UpstreamConfig(api_key_env="K"), {"K": " sk-1\n"}) == "sk-1"
    (tmp_path / "key").write_text("sk-2\n")
    assert upstream_api_key(UpstreamConfig(api_key_file=str(tmp_path / "key"))) == "sk-2"
    with pytest.raises(ValueError, match="not set"):
        upstream_api_key(UpstreamConfig(api_key_env="K"), {})
    with pytest.raises(ValueError, match="cannot read"):
        upstream_api_key(UpstreamConfig(api_key_file=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="at most one"):
        RouterConfig.model_validate({"pools": [{"name": "p", "models": ["m"], "endpoints": {"static": ["http://a:1"]}}],
                                     "upstream": {"apiKeyEnv": "A", "apiKeyFile": "/x"}})


def test_tenancy_and_limits_config_round_trip_and_reject_bad_values() -> None:
    base: dict[str, Any] = {"pools": [{"name": "p", "models": ["m"], "endpoints": {"static": ["http://a:1"]}}]}
    cfg = RouterConfig.model_validate({
        **base, "tenancy": {"cacheSharing": "shared", "tenantHeader": "X-Tenant"},
        "upstream": {"apiKeyFile": "/run/secrets/engine-key"}, "auth": {"apiKeysEnv": "K", "priorityKeys": ["ops"]},
        "limits": {"maxHeaderBytes": 8192, "maxHeaderCount": 50, "maxTokenizedPromptBytes": 0},
        "timeouts": {"clientHeaderS": 5, "clientBodyS": 10, "clientKeepAliveS": 15},
        "retries": {"maxServerErrorRetries": 0, "retryOnFull": False},
    })
    assert RouterConfig.model_validate(cfg.to_yaml_dict()) == cfg
    for bad in ({"tenancy": {"cacheSharing": "everyone"}}, {"limits": {"maxHeaderCount": 2}},
                {"timeouts": {"clientBodyS": 0}}, {"tenancy": {"tenantHeader": ""}}):
        with pytest.raises(ValueError):
            RouterConfig.model_validate({**base, **bad})
