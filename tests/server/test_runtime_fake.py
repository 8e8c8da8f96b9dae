"""Runtime behaviour on a real socket with the fake engine: disconnects, overload, health, metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from server_fakes import FakeEngine
from server_helpers import build_app, metric_values, serve_in_thread, wait_until

LONG = {"prompt": "long one", "max_tokens": 400, "ignore_eos": True}


async def test_stream_disconnect_aborts_and_frees() -> None:
    engine = FakeEngine(step_delay_s=0.01)
    app = build_app(engine)
    with serve_in_thread(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            async with client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
                assert r.status_code == 200
                lines = r.aiter_lines()
                got = 0
                async for line in lines:
                    got += line.startswith("data: ")
                    if got >= 3:
                        break
            # The connection is closed here: the engine must drop the request.
            await wait_until(lambda: engine.aborted and not engine.has_unfinished_requests())
            await wait_until(lambda: app.state.ctx.engine.stats.num_running == 0)
            values = metric_values((await client.get("/metrics")).text)
            assert values["vllm:num_requests_running"] == 0
            assert values["vllm:kv_cache_usage_perc"] == 0


async def test_non_stream_disconnect_aborts() -> None:
    engine = FakeEngine(step_delay_s=0.01)
    with serve_in_thread(build_app(engine)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            task = asyncio.create_task(client.post("/v1/completions", json=LONG))
            await wait_until(lambda: engine.running)
            task.cancel()
            await wait_until(lambda: engine.aborted and not engine.has_unfinished_requests())


async def test_overload_gives_429_and_accepted_requests_finish() -> None:
    engine = FakeEngine(step_delay_s=0.005, max_num_seqs=2)
    with serve_in_thread(build_app(engine, max_waiting=3, retry_after_s=2)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            body = {"prompt": "busy", "max_tokens": 20, "ignore_eos": True}
            responses = await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(24)))
            statuses = [r.status_code for r in responses]
            assert 429 in statuses and 200 in statuses
            assert set(statuses) <= {200, 429}
            for r in responses:
                if r.status_code == 429:
                    assert r.headers["retry-after"] == "2"
                    assert r.json()["error"]["code"] == "rate_limit_exceeded"
                else:
                    assert r.json()["choices"][0]["finish_reason"] == "length"
            values = metric_values((await client.get("/metrics")).text)
            assert values["shoal:requests_rejected_total{reason=queue_full}"] == statuses.count(429)


async def test_health_is_fast_while_engine_steps() -> None:
    engine = FakeEngine(step_delay_s=0.05)
    with serve_in_thread(build_app(engine)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            batch = [asyncio.create_task(client.post("/v1/completions", json={**LONG, "max_tokens": 30}))
                     for _ in range(4)]  # fmt: skip
            await wait_until(lambda: engine.running)
            worst = 0.0
            for _ in range(10):
                start = time.perf_counter()
                assert (await client.get("/health")).status_code == 200
                worst = max(worst, time.perf_counter() - start)
            assert worst < 0.1
            await asyncio.gather(*batch)


async def test_metrics_parse_and_move(make_client: Any) -> None:
    client, _, _ = await make_client()
    before = metric_values((await client.get("/metrics")).text)
    assert before["vllm:prompt_tokens_total"] == 0
    assert before["vllm:cache_config_info{block_size=4,num_gpu_blocks=256}"] == 1
    for _ in range(2):
        r = await client.post("/v1/completions", json={"prompt": "abcdefgh", "max_tokens": 5, "ignore_eos": True})
        assert r.status_code == 200
    r = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "q"}],
                                                        "max_tokens": 4, "program_id": "p", "program_retention_s": 9})  # fmt: skip
    prompt_len = r.json()["usage"]["prompt_tokens"]
    after = metric_values((await client.get("/metrics")).text)
    assert after["vllm:prompt_tokens_total"] == 16 + prompt_len
    assert after["vllm:generation_tokens_total"] == 10 + r.json()["usage"]["completion_tokens"]
    assert after["vllm:prefix_cache_queries_total"] == 16 + prompt_len
    assert after["vllm:prefix_cache_hits_total"] == 8
    assert after["vllm:time_to_first_token_seconds_count"] == 3
    assert after["vllm:e2e_request_latency_seconds_count"] == 3
    assert after["vllm:request_queue_time_seconds_count"] == 3
    assert after["vllm:inter_token_latency_seconds_count"] == 4 + 4 + 3
    assert after["vllm:request_success_total{finished_reason=length}"] == 3
    assert after["shoal:programs"] == 1 and after["shoal:pinned_blocks"] > 0
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:num_preemptions_total"):  # fmt: skip
        assert name in after
    text = (await client.get("/metrics")).text
    assert 'model_name="fake-model"' in text


async def test_drain_answers_503_then_cuts_running_requests_with_an_error() -> None:
    import signal
    import threading

    from server_helpers import free_port

    from shoal.engine.server.cli import _DrainingServer
    from shoal.engine.server.http_limits import uvicorn_config

    engine = FakeEngine(step_delay_s=0.01)
    app = build_app(engine)
    ctx = app.state.ctx
    port = free_port()
    config = uvicorn_config(app, ctx.settings, host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=5)  # fmt: skip
    server = _DrainingServer(config, on_drain=lambda: setattr(ctx, "draining", True), engine=ctx.engine,
                             drain_delay=0.5, drain_timeout=1.0)  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    await wait_until(lambda: server.started)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def streamed() -> str:
            async with client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as r:
                return "".join([line + "\n" async for line in r.aiter_lines()])

        plain = asyncio.create_task(client.post("/v1/completions", json=LONG))
        stream = asyncio.create_task(streamed())
        await wait_until(lambda: len(engine.running) == 2)
        server.handle_exit(signal.SIGTERM, None)
        assert ctx.draining
        start = time.monotonic()
        # before the listener closes, a new client gets 503 + Retry-After (not "connection refused")
        async with httpx.AsyncClient(base_url=url, timeout=5) as fresh:
            assert (await fresh.get("/health")).status_code == 503
            r = await fresh.post("/v1/completions", json={"prompt": "new", "max_tokens": 2})
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            assert r.json()["error"]["code"] == "server_draining"
        r = await plain
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_shutdown"
        body = await stream
        assert '"code":"server_shutdown"' in body and body.rstrip().endswith("data: [DONE]")
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive() and time.monotonic() - start < 5
        assert not engine.has_unfinished_requests()
