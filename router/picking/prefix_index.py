"""Per-endpoint indexes of which prompt blocks an engine (probably) holds.

Both index kinds answer one question, ``matched(url, hashes)``: how many leading blocks
of this prompt are cached there. Hashes are the engine's chained block hashes, so a
block hash stands for its whole prefix.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol


class PrefixIndex(Protocol):
    """Where prefixes live, per endpoint URL."""

    def matched(self, url: str, hashes: Sequence[int]) -> int:
        """Number of leading ``hashes`` held by ``url``."""
        ...

    def record(self, url: str, hashes: Sequence[int]) -> None:
        """The router just sent a prompt with these block hashes to ``url``."""
        ...

    def forget(self, url: str) -> None:
        """``url`` left the pool (or restarted): drop what is known about it."""
        ...


def _leading(held: Callable[[int], bool], hashes: Sequence[int]) -> int:
    count = 0
    for block_hash in hashes:
        if not held(block_hash):
            break
        count += 1
    return count


class ApproximatePrefixIndex:
    """Remembers the block hashes the router sent to each endpoint, in a bounded LRU.

    It guesses the engine's cache from the traffic alone: nothing is polled, so it is
    cheap, and it works with any engine. It cannot see evictions, hence the bound.
    """

    def __init__(self, max_blocks_per_endpoint: int) -> None:
        if max_blocks_per_endpoint < 1:
            raise ValueError("max_blocks_per_endpoint must be >= 1")
        self._max = max_blocks_per_endpoint
        self._lru: dict[str, OrderedDict[int, None]] = {}

    def matched(self, url: str, hashes: Sequence[int]) -> int:
        lru = self._lru.get(url)
        if not lru or not hashes:
            return 0
        return _leading(lru.__contains__, hashes)

    def record(self, url: str, hashes: Sequence[int]) -> None:
        lru = self._lru.setdefault(url, OrderedDict())
        # Deepest block first, so the shared leading blocks end up most recent and a
        # prefix is evicted from its tail, as an engine's cache evicts leaves first.
        for block_hash in reversed(hashes):
            if block_hash in lru:
                lru.move_to_end(block_hash)
            else:
                lru[block_hash] = None
        while len(lru) > self._max:
            lru.popitem(last=False)

    def forget(self, url: str) -> None:
        self._lru.pop(url, None)

    def size(self, url: str) -> int:
        """Blocks remembered for ``url``."""
        return len(self._lru.get(url, ()))


class PrecisePrefixIndex:
    """What each engine reported holding (``GET /shoal/kv/digest``), plus what was sent since.

    Between two polls, prompts just sent are counted as cached: the engine is about to
    cache them, and without this a burst would all see the same stale digest.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, pending_ttl_s: float = 30.0) -> None:
        self._clock = clock
        self._pending_ttl_s = pending_ttl_s
        self._digest: dict[str, frozenset[int]] = {}
        self._pending: dict[str, dict[int, float]] = {}

    def matched(self, url: str, hashes: Sequence[int]) -> int:
        digest = self._digest.get(url, frozenset())
        pending = self._pending.get(url, {})
        if not hashes or (not digest and not pending):
            return 0
        return _leading(lambda h: h in digest or h in pending, hashes)

    def record(self, url: str, hashes: Sequence[int]) -> None:
        now = self._clock()
        pending = self._pending.setdefault(url, {})
        for block_hash in hashes:
            pending[block_hash] = now

    def update_digest(self, url: str, hashes: Iterable[int], taken_at: float) -> None:
        """Replace ``url``'s digest with a fresh poll taken (requested) at ``taken_at``."""
        self._digest[url] = frozenset(hashes)
        pending = self._pending.get(url)
        if pending:
            # Keep only what was sent after the poll began (the digest may not show it yet),
            # and never longer than the TTL (the engine may have evicted it since).
            horizon = max(taken_at, self._clock() - self._pending_ttl_s)
            self._pending[url] = {h: t for h, t in pending.items() if t >= horizon}

    def forget(self, url: str) -> None:
        self._digest.pop(url, None)
        self._pending.pop(url, None)

    def size(self, url: str) -> int:
        """Blocks known for ``url`` (digest + pending)."""
        return len(self._digest.get(url, ())) + len(self._pending.get(url, ()))
