"""Acceptance (issue 9, point 4): program scheduling through the router with two REAL engines.

Engines are ``python -m shoal.engine serve`` subprocesses on a tiny random model with a small
KV pool (32 blocks of 16 tokens); the router runs in-process with tight watermarks, so two
programs on one engine overflow it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _fakes import Served

from shoal.router.app import create_app
from shoal.router.config import RouterConfig
from shoal.router.endpoints import parse_kv_capacity
from shoal.router.programs.gateway import ProgramGateway
from support.processes import wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]
SYSTEM = "You are a careful coding agent. Read the files, then fix the failing test. " * 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def engine_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.tiny_models import build_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("program-engines")
    model = build_tiny_checkpoint("llama", tmp / "tiny")
    procs: list[tuple[subprocess.Popen[bytes], str, Path]] = []
    try:
        for i in range(2):
            port, log = _free_port(), tmp / f"engine{i}.log"
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "shoal.engine", "serve", "--model", str(model), "--host", "127.0.0.1",
                     "--port", str(port), "--served-model-name", "tiny", "--device", "cpu", "--num-threads", "1",
                     "--num-kv-blocks", "32", "--block-size", "16", "--max-num-seqs", "4", "--log-level", "warning"],
                    stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                )
            procs.append((proc, f"http://127.0.0.1:{port}", log))
        for proc, url, log in procs:
            wait_healthy(url, proc, log, 180)
        yield [url for _, url, _ in procs]
    finally:
        for proc, _, _ in procs:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
async def router(engine_urls: list[str]) -> AsyncIterator[tuple[str, ProgramGateway]]:
    cfg = RouterConfig.model_validate({
        "pools": [{"name": "chat", "models": ["tiny"], "endpoints": {"static": engine_urls}}],
        "health": {"scrapeIntervalS": 0.1, "probeTimeoutS": 2},
        "timeouts": {"connectS": 1, "firstByteS": 60, "idleS": 30, "totalS": 120},
        "programs": {"highWatermark": 0.6, "lowWatermark": 0.4, "retentionDefaultS": 120, "tickS": 0.1},
    })
    app = create_app(cfg)
    served = await Served(app).start()
    gateway = app.services.programs
    assert gateway is not None
    pool = app.services.pools["chat"]
    for _ in range(600):
        if len(gateway.scheduler.engines()) == 2 and pool.hasher.tokenizer is not None:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("engines never reported their KV capacity")
    # These turns ask for no tool, which alone reads as a final answer (no pin after it); the
    # class has seen its clients come back ~20 s after such answers, so they are pinned.
    for _ in range(3):
        gateway.scheduler.durations.observe("default", [], 20.0)
    yield served.url, gateway
    await served.stop()


async def _call(c: httpx.AsyncClient, program_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    r = await c.post("/v1/chat/completions", json={
        "model": "tiny", "messages": messages, "max_tokens": 4, "temperature": 0, "program_id": program_id,
    })
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"] or "ok"})
    return body


async def _engine_kv(url: str) -> Any:
    async with httpx.AsyncClient() as c:
        return parse_kv_capacity((await c.get(url + "/metrics")).text)


async def test_paused_program_resumes_on_its_origin_engine_with_a_cache_hit(
    router: tuple[str, ProgramGateway],
) -> None:
    url, gateway = router
    sched = gateway.scheduler
    a = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Task A: the parser drops commas."}]
    b = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Task B: the cache leaks memory."}]
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        await _call(c, "prog-a", a)
        origin = sched.view("prog-a", "anonymous").engine
        await _call(c, "prog-b", b)  # shares the system prompt: prefix affinity puts it beside A
        assert sched.view("prog-b", "anonymous").engine == origin
        # D fills the other engine past the low watermark, so a paused A has nowhere else to go.
        await _call(c, "prog-d", [{"role": "user", "content": "Summarize this changelog: " + "fixed a bug. " * 60}])
        assert sched.view("prog-d", "anonymous").engine != origin
        # B's next turn brings a long tool observation: the engine's working set crosses the
        # high watermark; A (acting, pinned) is paused first, and its pin is dropped.
        b.append({"role": "user", "content": "Tool output: " + "line of log output here " * 40})
        await _call(c, "prog-b", b)
        assert sched.counters.pauses["default"] >= 1, (sched.views(), sched.working_sets(), sched.engines())
        # A is paused, or already resumed without a call (onto its origin: D holds the other
        # engine) once B, marked as it ran, left at the end of its call.
        a_now = sched.view("prog-a", "anonymous")
        assert a_now.lifecycle == "paused" or (sched.counters.resumes["default"] >= 1 and a_now.engine == origin)
        assert (await c.post("/v1/programs/prog-b/release")).status_code == 200
        # A's next turn: resumed on the engine that still holds its blocks, and hits them.
        a.append({"role": "user", "content": "Tool output: tests pass now."})
        answer = await _call(c, "prog-a", a)
        view = sched.view("prog-a", "anonymous")
        for done in ("prog-a", "prog-d"):  # no pin left for later tests
            assert (await c.post(f"/v1/programs/{done}/release")).status_code == 200
    assert view.lifecycle == "active" and view.engine == origin
    assert sched.counters.resumes["default"] >= 1
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


async def test_released_program_has_no_pins_left(router: tuple[str, ProgramGateway]) -> None:
    url, gateway = router
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Task C: rename a field."}]
    before = {u: await _engine_kv(u) for u in gateway.scheduler.engines()}
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        r = await c.post("/v1/chat/completions", json={
            "model": "tiny", "messages": messages, "max_tokens": 4, "temperature": 0, "program_id": "prog-c",
            "stream": True,
        })
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        view = gateway.scheduler.view("prog-c", "anonymous")  # usage read from the engine's SSE comment
        assert view.turns == 1 and view.context_tokens > 0 and view.prompt_tokens_total > 0
        engine = view.engine
        assert engine is not None
        baseline = before[engine].pinned_blocks  # pins another test may have left there
        kv = await _engine_kv(engine)
        assert kv is not None and kv.pinned_blocks > baseline
        assert (await c.post("/v1/programs/prog-c/release")).status_code == 200
    for _ in range(50):  # the pin drop is one POST away
        kv = await _engine_kv(engine)
        if kv is not None and kv.pinned_blocks == baseline:
            break
        await asyncio.sleep(0.02)
    assert kv is not None and kv.pinned_blocks == baseline
