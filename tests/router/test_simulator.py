"""The routing simulator (bench/sim) drives the router's real picking code; a tiny run of each mode."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _fakes import Served

from bench.sim.engine import EngineSpec
from bench.sim.fleet import FleetParams, RunResult, oracle_hit_rate, simulate
from bench.sim.server import SimServer
from bench.sim.workload import ChatWorkload
from shoal.router.app import create_app
from shoal.router.config import PickingConfig, RouterConfig


def test_virtual_clock_prefix_aware_beats_round_robin() -> None:
    params = FleetParams(engines=3, rate=2.0, duration_s=40, warmup_s=10,
                         spec=EngineSpec(capacity_blocks=1500), workload=ChatWorkload(turns=4, think_time_s=2))
    rr = simulate(params, PickingConfig.model_validate({"filters": ["healthy"], "scorers": [], "picker": "round-robin"}),
                  "rr")
    pa = simulate(params, PickingConfig(), "prefix")

    def hit(r: RunResult) -> float:
        m = r.measured()
        return sum(x.cached_tokens for x in m) / sum(x.prompt_len for x in m)

    assert len(rr.measured()) > 50 and len(pa.measured()) > 50
    assert hit(pa) > hit(rr) + 0.15
    oracle = oracle_hit_rate(rr.requests, 1500 * 3, 16, 10)
    assert hit(pa) >= 0.85 * oracle


async def test_sim_servers_behind_the_real_router() -> None:
    sims = [await Served(SimServer(f"s{i}", time_scale=0.2).app()).start() for i in range(2)]
    cfg = RouterConfig.model_validate({
        "pools": [{"name": "sim", "models": ["sim"], "endpoints": {"static": [s.url for s in sims]},
                   "tokenizer": {"source": "none"}}],
        "health": {"scrapeIntervalS": 0.05},
    })
    router = await Served(create_app(cfg)).start()
    try:
        async with httpx.AsyncClient(base_url=router.url, timeout=30) as c:
            messages = [{"role": "system", "content": "you are a simulated assistant " * 30}]
            cached = []
            for turn in range(3):
                messages.append({"role": "user", "content": f"question {turn} " * 20})
                r = await c.post("/v1/chat/completions", json={"model": "sim", "messages": messages, "max_tokens": 8})
                body = r.json()
                cached.append(body["usage"]["prompt_tokens_details"]["cached_tokens"])
                messages.append(body["choices"][0]["message"])
            async with c.stream("POST", "/v1/chat/completions",
                                json={"model": "sim", "messages": messages, "max_tokens": 5, "stream": True}) as s:
                events = [line async for line in s.aiter_lines() if line.startswith("data:")]
            digests = [(await c.get(s.url + "/shoal/kv/digest")).json()["hashes"] for s in sims]
        assert cached[0] == 0 and cached[1] > 0 and cached[2] > cached[1]  # every turn hit its predecessor
        assert events[-1] == "data: [DONE]" and len(events) >= 6
        assert sum(1 for d in digests if d) == 1  # one conversation, one engine
    finally:
        await router.stop()
        for s in sims:
            await s.stop()
