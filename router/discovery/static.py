"""A fixed list of endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable


class StaticSource:
    """Yields its list once, then waits forever."""

    def __init__(self, urls: Iterable[str]) -> None:
        self._urls = frozenset(u.rstrip("/") for u in urls)

    async def watch(self) -> AsyncIterator[frozenset[str]]:
        yield self._urls
        await asyncio.Event().wait()
