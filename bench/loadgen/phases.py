"""Traffic phases of the serving benchmark: open-loop arrivals and multi-turn program conversations."""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from loadgen.client import RequestResult, send_streaming
from loadgen.workload import RequestSpec, arrival_gaps, chat_turn, conversations


async def open_loop(
    url: str,
    specs: Sequence[RequestSpec],
    gaps: Sequence[float],
    advance: Callable[[], None],
    send: Callable[[httpx.AsyncClient, RequestSpec], Any] = send_streaming,
) -> tuple[list[RequestResult], float]:
    """Send ``specs`` at the given arrival gaps (open loop); returns results and the run's wall time."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600), limits=limits) as client:

        async def one(spec: RequestSpec) -> RequestResult:
            result: RequestResult = await send(client, spec)
            advance()
            return result

        tasks = []
        start = time.perf_counter()
        target = start
        for spec, gap in zip(specs, gaps, strict=True):
            target += gap
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(spec)))
        results = list(await asyncio.gather(*tasks))
        return results, time.perf_counter() - start


async def multi_turn(
    url: str, model: str, args: argparse.Namespace, rng: random.Random, advance: Callable[[], None]
) -> tuple[list[RequestResult], float]:
    convs = conversations(args.conversations, args.turns, args.prompt_len, args.output_len, rng)
    gaps = arrival_gaps(len(convs), args.conversation_rate, args.arrival, args.burstiness, rng)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600)) as client:

        async def run(conv: Any, delay: float) -> list[RequestResult]:
            await asyncio.sleep(delay)
            history: list[dict[str, str]] = []
            results = []
            for turn, (text, out_len) in enumerate(zip(conv.user_turns, conv.output_lens, strict=True)):
                history.append({"role": "user", "content": text})
                result = await send_streaming(client, chat_turn(model, list(history), out_len, conv.program_id), turn)
                results.append(result)
                advance()
                history.append({"role": "assistant", "content": result.text or "ok"})
            await client.post(f"/v1/programs/{conv.program_id}/release")
            return results

        start = time.perf_counter()
        offsets = [sum(gaps[: i + 1]) for i in range(len(gaps))]
        nested = await asyncio.gather(*(run(c, d) for c, d in zip(convs, offsets, strict=True)))
        return [r for rs in nested for r in rs], time.perf_counter() - start
