"""Waiting on the engine streams of one HTTP request (one per prompt)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from shoal.engine.server.async_engine import RequestStream, StreamUpdate


async def final_updates(streams: Sequence[RequestStream]) -> list[StreamUpdate]:
    """Wait for every stream to finish; the last update of each."""

    async def last(stream: RequestStream) -> StreamUpdate:
        last_update = None
        async for update in stream:
            last_update = update
        assert last_update is not None
        return last_update

    if len(streams) == 1:
        return [await last(streams[0])]
    return list(await asyncio.gather(*(last(s) for s in streams)))


async def merged_updates(streams: Sequence[RequestStream]) -> AsyncIterator[tuple[int, StreamUpdate]]:
    """(stream position, update) from several streams as they come."""
    if len(streams) == 1:
        async for update in streams[0]:
            yield 0, update
        return
    queue: asyncio.Queue[tuple[int, StreamUpdate | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for update in stream:
                queue.put_nowait((i, update, None))
            queue.put_nowait((i, None, None))
        except BaseException as exc:
            queue.put_nowait((i, None, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, update, exc = await queue.get()
            if exc is not None:
                raise exc
            if update is None:
                remaining -= 1
            else:
                yield i, update
    finally:
        for task in tasks:
            task.cancel()
