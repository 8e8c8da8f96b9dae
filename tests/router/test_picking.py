"""Unit tests of the picking plugins, the runner and consistent tie-breaking."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytest

from shoal.engine.block_hash import prefix_block_hashes
from shoal.router.config import PickingConfig, PluginSpec, PrefixConfig
from shoal.router.picking.filters import (
    HealthyFilter,
    NotSaturatedFilter,
    NotSaturatedParams,
    ServesModelFilter,
)
from shoal.router.picking.hashing import hrw_choose
from shoal.router.picking.params import NoParams
from shoal.router.picking.pickers import MaxScoreParams, MaxScorePicker, RoundRobinPicker
from shoal.router.picking.plugin import Scorer
from shoal.router.picking.prefix_index import ApproximatePrefixIndex, PrecisePrefixIndex
from shoal.router.picking.registry import PluginContext, build_runner, make_prefix_index, registered
from shoal.router.picking.runner import NoEndpointError, PickResult, PickRunner, WeightedScorer
from shoal.router.picking.scorers_affinity import (
    PrefixAffinityParams,
    PrefixAffinityScorer,
    SessionAffinityParams,
    SessionAffinityScorer,
)
from shoal.router.picking.scorers_load import (
    KvUsageParams,
    KvUsageScorer,
    LeastRequestsScorer,
    QueueDepthScorer,
)
from shoal.router.picking.types import Candidate, EndpointId, EndpointMetrics, PickRequest, Scored


def cand(url: str, *, healthy: bool = True, models: frozenset[str] | None = None, waiting: float | None = 0,
         kv: float = 0.0, inflight: int = 0, sent: int = 0) -> Candidate:
    metrics = None if waiting is None else EndpointMetrics(running=0, waiting=waiting, kv_usage=kv, age_s=0.1)
    return Candidate(url, "p", healthy, models, metrics, inflight, sent)


REQ = PickRequest(request_id="r1", model="m", pool="p")


async def test_filters() -> None:
    eps = [cand("a", healthy=False), cand("b", models=frozenset({"x"})), cand("c", models=frozenset({"m"})), cand("d")]
    assert [c.url for c in await HealthyFilter(NoParams()).filter(REQ, eps)] == ["b", "c", "d"]
    assert [c.url for c in await ServesModelFilter(NoParams()).filter(REQ, eps)] == ["a", "c", "d"]
    sat = NotSaturatedFilter(NotSaturatedParams(max_waiting=4, max_kv_usage=0.9))
    eps = [cand("a", waiting=5), cand("b", waiting=1, sent=3), cand("c", kv=0.95), cand("d", waiting=None), cand("e")]
    assert [c.url for c in await sat.filter(REQ, eps)] == ["d", "e"]
    assert not sat.strict


async def test_load_scorers_and_staleness() -> None:
    eps = [cand("a", waiting=4), cand("b", waiting=0, sent=2), cand("c", waiting=None, inflight=1)]
    q = await QueueDepthScorer(NoParams()).score(REQ, eps)
    # b: 0 waiting + 2 sent since the scrape; c: stale metrics -> 1 in flight
    assert q == {"a": 0.0, "b": pytest.approx(2 / 3), "c": 1.0}
    kv = await KvUsageScorer(KvUsageParams()).score(REQ, [cand("a", kv=0.25), cand("b", waiting=None)])
    assert kv == {"a": 0.75, "b": 0.5}
    lr = await LeastRequestsScorer(NoParams()).score(REQ, [cand("a", inflight=2), cand("b", inflight=2)])
    assert lr == {"a": 1.0, "b": 1.0}


def test_approximate_index_is_bounded_and_evicts_tails_first() -> None:
    idx = ApproximatePrefixIndex(max_blocks_per_endpoint=4)
    idx.record("a", [1, 2, 3])
    assert idx.matched("a", [1, 2, 3, 9]) == 3
    idx.record("a", [1, 7, 8])  # shares block 1
    assert idx.size("a") == 4
    assert idx.matched("a", [1, 2, 3]) == 2  # the oldest tail (block 3) went first
    assert idx.matched("a", [1, 7, 8]) == 3
    idx.forget("a")
    assert idx.matched("a", [1]) == 0


def test_precise_index_merges_digest_and_recent_sends() -> None:
    now = [100.0]
    idx = PrecisePrefixIndex(clock=lambda: now[0], pending_ttl_s=10)
    idx.update_digest("a", [1, 2], taken_at=100.0)
    assert idx.matched("a", [1, 2, 3]) == 2
    now[0] = 101.0
    idx.record("a", [1, 2, 3])
    assert idx.matched("a", [1, 2, 3]) == 3
    idx.update_digest("a", [1], taken_at=100.5)  # poll began before the send: pending kept
    assert idx.matched("a", [1, 2, 3]) == 3
    idx.update_digest("a", [1], taken_at=101.5)  # poll after the send, and it is gone: evicted
    assert idx.matched("a", [1, 2, 3]) == 1


async def test_prefix_scorer_uses_engine_block_hashes() -> None:
    idx = ApproximatePrefixIndex(1000)
    scorer = PrefixAffinityScorer(PrefixAffinityParams(), idx)
    tokens = list(range(64))
    hashes = tuple(prefix_block_hashes(tokens, 16))
    req = PickRequest("r", "m", "p", block_hashes=hashes)
    await scorer.on_picked(req, cand("b"))
    longer = PickRequest("r", "m", "p", block_hashes=tuple(prefix_block_hashes([*tokens, *range(100, 132)], 16)))
    scores = await scorer.score(longer, [cand("a"), cand("b")])
    assert scores == {"a": 0.0, "b": pytest.approx(4 / 6)}
    assert await scorer.score(PickRequest("r", "m", "p"), [cand("a")]) == {}


async def test_session_affinity_is_consistent_and_minimal_on_removal() -> None:
    scorer = SessionAffinityScorer(SessionAffinityParams())
    eps = [cand(f"http://e{i}") for i in range(5)]
    owners = {}
    for sid in range(200):
        req = PickRequest("r", "m", "p", session_id=f"s{sid}")
        (winner,) = (await scorer.score(req, eps)).keys()
        owners[sid] = winner
    assert len(set(owners.values())) == 5
    survivors = [c for c in eps if c.url != "http://e2"]
    for sid, owner in owners.items():
        (winner,) = (await scorer.score(PickRequest("r", "m", "p", session_id=f"s{sid}"), survivors)).keys()
        if owner != "http://e2":
            assert winner == owner  # only the removed endpoint's sessions move
    program = PickRequest("r", "m", "p", program_id="prog", session_id="sess")
    assert next(iter(await scorer.score(program, eps))) == hrw_choose("prog", [c.url for c in eps])


class Fixed(Scorer):
    type_name = "fixed"

    def __init__(self, values: Mapping[EndpointId, float]) -> None:
        self.values = values

    async def score(self, req: PickRequest, endpoints: Sequence[Candidate]) -> Mapping[EndpointId, float]:
        return self.values


async def test_runner_clamps_weights_times_and_observes() -> None:
    seen: list[PickResult] = []

    class Obs:
        def observe_pick(self, pool: str, result: PickResult) -> None:
            seen.append(result)

    runner = PickRunner(
        "p",
        [HealthyFilter(NoParams())],
        [WeightedScorer(Fixed({"a": 7.0, "b": -3.0, "c": math.nan}), 1.0),
         WeightedScorer(Fixed({"b": 0.9, "c": 0.5}), 2.0)],
        MaxScorePicker(MaxScoreParams()),
        Obs(),
    )
    result = await runner.pick(REQ, [cand("c"), cand("b"), cand("a"), cand("x", healthy=False)])
    assert result.per_scorer["fixed"] == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert result.per_scorer["fixed#2"] == {"a": 0.0, "b": 0.9, "c": 0.5}
    assert result.totals == {"a": 1.0, "b": 1.8, "c": 1.0}
    assert result.chosen.url == "b" and not result.tie
    assert set(result.timings_s) == {"filter:healthy", "scorer:fixed", "scorer:fixed#2", "picker:max-score"}
    assert seen == [result]


async def test_runner_strict_and_soft_filters() -> None:
    runner = build_runner(PickingConfig(), PluginContext("p", ApproximatePrefixIndex(10)))
    with pytest.raises(NoEndpointError):
        await runner.pick(REQ, [cand("a", healthy=False)])
    with pytest.raises(NoEndpointError):
        await runner.pick(REQ, [])
    # every endpoint saturated: the soft filter keeps them all
    result = await runner.pick(REQ, [cand("a", waiting=100), cand("b", waiting=50)])
    assert result.chosen.url == "b"


async def test_tie_break_agrees_across_two_router_instances() -> None:
    cfg = PickingConfig(scorers=[PluginSpec(type="kv-usage")])
    r1 = build_runner(cfg, PluginContext("p", make_prefix_index(PrefixConfig())))
    r2 = build_runner(cfg, PluginContext("p", make_prefix_index(PrefixConfig())))
    eps = [cand(f"http://10.0.0.{i}:8000") for i in range(8)]
    picks = set()
    for n in range(100):
        req = PickRequest(f"router-local-{n}", "m", "p", content_key=f"prompt-{n}")
        a = await r1.pick(req, eps)
        b = await r2.pick(PickRequest(f"other-{n}", "m", "p", content_key=f"prompt-{n}"), list(reversed(eps)))
        assert a.tie and a.chosen.url == b.chosen.url
        picks.add(a.chosen.url)
    assert len(picks) == 8  # and the ties spread over all endpoints


async def test_round_robin_picker_cycles() -> None:
    picker = RoundRobinPicker(NoParams())
    scored = [Scored(cand(u), 0.0) for u in "abc"]
    assert [(await picker.pick(REQ, scored)).url for _ in range(4)] == ["a", "b", "c", "a"]


def test_registry_lists_every_plugin() -> None:
    assert registered("filter") == ["healthy", "not-saturated", "serves-model"]
    assert registered("scorer") == ["kv-usage", "least-requests", "prefix-affinity", "queue-depth", "session-affinity"]
    assert registered("picker") == ["max-score", "random", "round-robin"]


async def test_prefix_affinity_is_damped_by_the_preferred_engines_queue() -> None:
    index = ApproximatePrefixIndex(1000)
    hashes = tuple(prefix_block_hashes(list(range(160)), 16))
    index.record("a", hashes)
    scorer = PrefixAffinityScorer(PrefixAffinityParams(load_slack=4), index)
    req = PickRequest(request_id="r", model="m", pool="p", block_hashes=hashes)
    assert await scorer.score(req, [cand("a"), cand("b")]) == {"a": 1.0, "b": 0.0}
    assert (await scorer.score(req, [cand("a", waiting=2, sent=2), cand("b")]))["a"] == 0.5
    undamped = PrefixAffinityScorer(PrefixAffinityParams(load_slack=None), index)
    assert (await undamped.score(req, [cand("a", waiting=50), cand("b")]))["a"] == 1.0


async def test_a_burst_sharing_one_system_prompt_is_spread_over_both_engines() -> None:
    # Issue 11, defect 9: 12 concurrent chats with one system prompt all went to one of two engines.
    runner = build_runner(PickingConfig(), PluginContext("p", make_prefix_index(PrefixConfig())))
    sent = {"a": 0, "b": 0}
    system = list(range(800))
    for i in range(12):
        ids = system + [10_000 + i] * 40
        req = PickRequest(request_id=f"r{i}", model="m", pool="p", block_hashes=tuple(prefix_block_hashes(ids, 16)))
        result = await runner.pick(req, [cand(u, sent=n) for u, n in sent.items()])
        sent[result.chosen.url] += 1
    assert min(sent.values()) >= 3, sent
