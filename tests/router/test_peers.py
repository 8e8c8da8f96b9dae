"""Program ownership over router replicas: rendezvous order, liveness, trust of forwarded requests."""

from __future__ import annotations

import collections
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from shoal.router.config import PeersConfig, RouterConfig
from shoal.router.peer_forwarding import program_id_of_path
from shoal.router.peers import (
    CLIENT_ADDR_HEADER,
    FORWARDED_HEADER,
    PEER_SECRET_HEADER,
    PeerSet,
    forwarding_secret,
)
from shoal.router.programs.ownership import owner_of, owner_order

REPLICAS = ["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"]


def test_every_replica_computes_the_same_owner() -> None:
    for i in range(50):
        pid = f"prog-{i}"
        assert owner_of(pid, REPLICAS) == owner_of(pid, reversed(REPLICAS)) == owner_order(pid, REPLICAS)[0]


def test_a_dead_replica_moves_only_its_own_programs_to_their_next_replica() -> None:
    ids = [f"prog-{i}" for i in range(300)]
    dead = REPLICAS[1]
    survivors = [r for r in REPLICAS if r != dead]
    for pid in ids:
        order = owner_order(pid, REPLICAS)
        after = owner_of(pid, survivors)
        assert after == (order[1] if order[0] == dead else order[0])
    spread = collections.Counter(owner_of(pid, REPLICAS) for pid in ids)
    assert set(spread) == set(REPLICAS) and min(spread.values()) > 60  # about a third each


def test_no_live_replica_is_an_error() -> None:
    with pytest.raises(ValueError, match="no live router replica"):
        owner_of("p", [])


@pytest.mark.parametrize(
    ("path", "program_id"),
    [
        ("/v1/programs/agent-1", "agent-1"),
        ("/v1/programs/agent-1/release", "agent-1"),
        ("/v1/programs/team/agent:1/tools/run_tests", "team/agent:1"),
        ("/v1/programs/a%2Fb/release", "a/b"),
        ("/v1/programs/classes", None),
        ("/v1/programs/", None),
        ("/v1/programs", None),
        ("/v1/chat/completions", None),
    ],
)
def test_program_id_of_path(path: str, program_id: str | None) -> None:
    assert program_id_of_path(path) == program_id


def test_peers_config_errors_are_clear() -> None:
    ok = PeersConfig.model_validate({"self": "http://127.0.0.1:1/", "static": ["http://127.0.0.1:1", "http://127.0.0.1:2"]})
    assert ok.discovery().static == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"self": "http://127.0.0.1:1"}, "exactly one of 'static' or 'kubernetes'"),
        ({"static": ["http://127.0.0.1:1"]}, "peers.self is required"),
        ({"self": "not a url", "static": ["http://127.0.0.1:1"]}, "valid URL"),
        ({"self": "http://a:1", "static": ["http://a:1/v1"]}, "without /v1"),
        ({"self": "http://a:1", "static": ["http://a:1", "http://a:1/"]}, "duplicate"),
        ({"self": "http://a:1", "static": ["http://a:2"], "healthIntervalS": 0}, "greater than 0"),
    ]
    for data, message in cases:
        with pytest.raises(ValidationError, match=message):
            PeersConfig.model_validate(data)
    pool = {"name": "p", "models": ["m"], "endpoints": {"static": ["http://127.0.0.1:9"]}}
    cfg = RouterConfig.model_validate({"pools": [pool], "peers": {"self": "http://a:1", "static": ["http://a:2"]}})
    assert cfg.to_yaml_dict()["peers"]["self"] == "http://a:1"
    assert RouterConfig.model_validate(cfg.to_yaml_dict()) == cfg


def _peer_set(self_url: str, secret: str | None = None) -> PeerSet:
    cfg = PeersConfig.model_validate({"self": self_url, "static": REPLICAS, "downAfterFailures": 2})
    peers = PeerSet(cfg, httpx.AsyncClient(), CollectorRegistry(), secret)
    peers.set_members(frozenset(REPLICAS))
    return peers


def test_liveness_changes_the_owner_and_recovery_restores_it() -> None:
    pid = next(p for p in (f"prog-{i}" for i in range(100)) if owner_of(p, REPLICAS) == REPLICAS[2])
    me = _peer_set(REPLICAS[0])
    assert me.live() == REPLICAS and me.owner(pid) == REPLICAS[2]
    assert me.owned_elsewhere(pid, {}) and not me.owned_elsewhere(None, {})
    me._record_probe(REPLICAS[2], ok=False)
    assert me.owner(pid) == REPLICAS[2]  # one failed probe is not death
    me._record_probe(REPLICAS[2], ok=False)
    assert REPLICAS[2] not in me.live() and me.owner(pid) == owner_of(pid, REPLICAS[:2])
    me._record_probe(REPLICAS[2], ok=True)
    assert me.owner(pid) == REPLICAS[2]
    me.mark_down(REPLICAS[2])  # a failed forward counts at once
    assert REPLICAS[2] not in me.live()
    me.set_members(frozenset(REPLICAS[:2]))  # discovery drops it
    assert me.live() == REPLICAS[:2]


def test_forwarded_requests_are_served_where_they_land_only_with_the_secret() -> None:
    pid = next(p for p in (f"prog-{i}" for i in range(100)) if owner_of(p, REPLICAS) != REPLICAS[0])
    open_peers = _peer_set(REPLICAS[0])
    assert not open_peers.owned_elsewhere(pid, {FORWARDED_HEADER: "1"})
    guarded = _peer_set(REPLICAS[0], secret="s3cret")
    assert guarded.owned_elsewhere(pid, {FORWARDED_HEADER: "1"})  # a client cannot pick its replica
    assert guarded.owned_elsewhere(pid, {FORWARDED_HEADER: "1", PEER_SECRET_HEADER: "guess"})
    assert not guarded.owned_elsewhere(pid, {FORWARDED_HEADER: "1", PEER_SECRET_HEADER: "s3cret"})
    headers = guarded.forward_headers({"authorization": "Bearer k", "host": "x", "content-length": "3",
                                        FORWARDED_HEADER: "7", "x-shoal-program-id": pid,
                                        CLIENT_ADDR_HEADER: "6.6.6.6"}, client_addr="10.9.8.7")  # fmt: skip
    assert headers == {"authorization": "Bearer k", "x-shoal-program-id": pid, FORWARDED_HEADER: "1",
                       PEER_SECRET_HEADER: "s3cret", CLIENT_ADDR_HEADER: "10.9.8.7"}  # fmt: skip
    # The owner rate-limits a keyless forwarded call by the client's address, not the forwarder's,
    # and believes that address only from a replica holding the secret.
    assert guarded.client_addr(headers) == "10.9.8.7"
    assert guarded.client_addr({**headers, PEER_SECRET_HEADER: "guess"}) is None
    assert open_peers.client_addr({FORWARDED_HEADER: "1", CLIENT_ADDR_HEADER: "10.9.8.7"}) is None
    assert CLIENT_ADDR_HEADER not in open_peers.forward_headers({}, client_addr="10.9.8.7")


def test_kubernetes_replicas_know_themselves_by_pod_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = PeersConfig.model_validate(
        {"kubernetes": {"namespace": "ns", "labelSelector": "shoal.dev/router=r", "port": 8080}}
    )
    monkeypatch.delenv("POD_IP", raising=False)
    with pytest.raises(ValueError, match=r"\$POD_IP is empty"):
        PeerSet(cfg, httpx.AsyncClient(), CollectorRegistry())
    monkeypatch.setenv("POD_IP", "10.1.2.3")
    peers = PeerSet(cfg, httpx.AsyncClient(), CollectorRegistry())
    assert peers.self_url == "http://10.1.2.3:8080"
    peers.set_members(frozenset({"http://10.1.2.3:8080", "http://10.1.2.4:8080"}))  # discovery lists itself too
    assert peers.live() == ["http://10.1.2.3:8080", "http://10.1.2.4:8080"]


def test_a_missing_forwarding_secret_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_PEER_SECRET_TEST", raising=False)
    with pytest.raises(ValueError, match=r"\$SHOAL_PEER_SECRET_TEST, which is empty or unset"):
        forwarding_secret("SHOAL_PEER_SECRET_TEST")
    monkeypatch.setenv("SHOAL_PEER_SECRET_TEST", "x")
    assert forwarding_secret("SHOAL_PEER_SECRET_TEST") == "x" and forwarding_secret(None) is None
