"""SIGTERM on a real server process: stop accepting, finish running requests, exit 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
from server_helpers import engine_server, metric_values

pytestmark = pytest.mark.integration


def test_sigterm_drains_and_exits_zero(tiny_model_dir: Path, tmp_path: Path) -> None:
    args = ["--num-kv-blocks", "64", "--num-threads", "1", "--drain-timeout", "30", "--log-level", "info"]
    with engine_server(str(tiny_model_dir), *args, log_dir=tmp_path) as server:

        async def run() -> tuple[httpx.Response, str]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
                body = {"prompt": "drain me", "max_tokens": 150, "ignore_eos": True}
                plain = asyncio.create_task(c.post("/v1/completions", json=body))

                async def streamed() -> str:
                    async with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                        return "".join([line async for line in r.aiter_lines()])

                stream = asyncio.create_task(streamed())
                deadline = time.monotonic() + 10
                while metric_values((await c.get("/metrics")).text)["vllm:num_requests_running"] < 2:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                server.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                # Readiness fails at once; new requests get 503 + Retry-After while the listener is open.
                async with httpx.AsyncClient(base_url=server.url, timeout=2) as fresh:
                    assert (await fresh.get("/health")).status_code == 503
                    r = await fresh.post("/v1/completions", json={"prompt": "late", "max_tokens": 2})
                    assert r.status_code == 503 and "Retry-After" in r.headers
                await asyncio.sleep(1.5)
                # After --drain-delay the listener is closed: a new connection is refused.
                with pytest.raises(httpx.TransportError):
                    async with httpx.AsyncClient(base_url=server.url, timeout=2) as fresh:
                        await fresh.get("/health")
                return await plain, await stream

        plain, streamed = asyncio.run(run())
        assert plain.status_code == 200 and plain.json()["usage"]["completion_tokens"] == 150
        assert plain.json()["choices"][0]["finish_reason"] == "length"
        assert '"finish_reason":"length"' in streamed and streamed.endswith("data: [DONE]")
        assert server.process.wait(30) == 0, server.log_tail()
        assert "draining" in server.log_tail()
