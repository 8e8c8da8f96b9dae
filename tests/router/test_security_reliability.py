"""API keys, rate limits, circuit breaker, routes, metrics parsing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from shoal.router.auth import KeyStore, RateLimiter, parse_keys
from shoal.router.config import AuthConfig, CircuitBreakerConfig, RateLimitsConfig, RouterConfig
from shoal.router.endpoints import parse_engine_metrics
from shoal.router.errors import RouterError
from shoal.router.reliability import BreakerState, CircuitBreaker
from shoal.router.routes import RouteTable


def test_keys_from_file_dir_and_env(tmp_path: Path) -> None:
    assert parse_keys("a:k1, k2\n# c\n") == {"a": "k1", parse_keys("k2").popitem()[0]: "k2"}
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "team-a").write_text("sk-a\n")
    (secret / ".hidden").write_text("sk-hidden")
    store = KeyStore(AuthConfig(api_keys_file=str(secret), api_keys_env="KEYS"), environ={"KEYS": "bob:sk-b"})
    assert store.authenticate({"authorization": "Bearer sk-a"}) == "team-a"
    assert store.authenticate({"x-api-key": "sk-b"}) == "bob"
    for headers in ({}, {"authorization": "Bearer sk-hidden"}, {"authorization": "Basic sk-a"}):
        with pytest.raises(RouterError) as err:
            store.authenticate(headers)
        assert err.value.status == 401
    assert KeyStore(AuthConfig()).authenticate({}) is None  # auth off


def test_key_file_is_reloaded_on_change(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "keys"
    path.write_text("a:one\n")
    store = KeyStore(AuthConfig(api_keys_file=str(path), reload_interval_s=1), clock=lambda: now[0])
    assert store.authenticate({"authorization": "Bearer one"}) == "a"
    path.write_text("a:two\n")
    import os

    os.utime(path, ns=(1, 1))
    now[0] = 5.0
    assert store.authenticate({"authorization": "Bearer two"}) == "a"
    with pytest.raises(RouterError):
        store.authenticate({"authorization": "Bearer one"})


def test_token_buckets_and_retry_after() -> None:
    now = [0.0]
    cfg = RateLimitsConfig.model_validate(
        {"default": {"requestsPerSecond": 2, "burst": 2, "tokensPerSecond": 100, "tokenBurst": 150}}
    )
    limiter = RateLimiter(cfg, clock=lambda: now[0])
    limiter.check("k", 10)
    limiter.check("k", 10)
    with pytest.raises(RouterError) as err:
        limiter.check("k", 10)
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "1"
    now[0] = 0.5
    limiter.check("k", 10)  # one request refilled
    limiter.check("other", 10)  # keys are independent
    now[0] = 10.0
    limiter.check("k", 120)
    with pytest.raises(RouterError):
        limiter.check("k", 100)  # token bucket now short
    assert RateLimiter(RateLimitsConfig()).check("x", 10**9) is None


def test_circuit_breaker_ejects_holds_and_readmits() -> None:
    now = [0.0]
    br = CircuitBreaker(CircuitBreakerConfig(consecutive_failures=2, eject_s=1, max_eject_s=3), clock=lambda: now[0])
    assert not br.record_failure()
    br.record_success()  # a success ends the run of failures
    assert not br.record_failure()
    assert br.record_failure() and br.state is BreakerState.OPEN and not br.available
    now[0] = 0.9
    assert not br.probe_passed()
    now[0] = 1.0
    assert br.probe_passed() and br.available
    assert br.failures == 0


def test_parse_engine_metrics() -> None:
    text = (
        "# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="a"} 2.0\nvllm:num_requests_running{model_name="b"} 1\n'
        'vllm:num_requests_waiting{model_name="a"} 5\nvllm:kv_cache_usage_perc{model_name="a"} 0.25\n'
        "vllm:kv_cache_usage_perc_other 9\nvllm:num_requests_waiting_total 100\n"
    )
    assert parse_engine_metrics(text) == (3.0, 5.0, 0.25)
    assert parse_engine_metrics("other_metric 1\n") is None
    assert parse_engine_metrics("vllm:kv_cache_usage_perc 50\n") == (0.0, 0.0, 0.5)


def test_routes_aliases_rules_and_sticky_split() -> None:
    cfg = RouterConfig.model_validate(
        {
            "pools": [
                {"name": "small", "models": ["s-1", "s-2"], "aliases": ["cheap"], "endpoints": {"static": ["http://a:1"]}},
                {"name": "big", "models": ["b"], "endpoints": {"static": ["http://b:1"]}},
            ],
            "routes": [
                {"model": "auto", "aliases": ["gpt-4o"], "split": [{"pool": "small", "weight": 3}, {"pool": "big", "weight": 1}],
                 "rules": [{"keywords": ["PROVE"], "pool": "big"}, {"regex": r"\bsql\b", "pool": "small"}]},
            ],
        }
    )
    table = RouteTable(cfg, rng=random.Random(0))
    assert table.resolve("s-2", str).forward_model == "s-2"
    assert table.resolve("cheap", str).forward_model == "s-1"
    assert table.resolve("auto", lambda: "please prove it").pool == "big"
    assert table.resolve("gpt-4o", lambda: "write sql now").pool == "small"
    counts = {"small": 0, "big": 0}
    for _ in range(2000):
        counts[table.resolve("auto", lambda: "hi").pool] += 1
    assert 0.7 < counts["small"] / 2000 < 0.8
    sticky = {table.resolve("auto", lambda: "hi", sticky_key="prog-7").pool for _ in range(20)}
    assert len(sticky) == 1
    with pytest.raises(RouterError) as err:
        table.resolve("unknown", str)
    assert err.value.status == 404
    assert table.model_names() == {"s-1": "small", "s-2": "small", "cheap": "small", "b": "big", "auto": "", "gpt-4o": ""}
