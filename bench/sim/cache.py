"""SIMULATOR: a paged KV cache with prefix caching (hash -> block, LRU over unpinned blocks)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class BlockCache:
    """Block accounting only (no tensors). ``used`` = hashed blocks (pinned or cached) + anonymous ones."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self.ref: dict[int, int] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.anon = 0
        self.evictions = 0

    @property
    def used(self) -> int:
        return len(self.ref) + self.anon

    @property
    def pinned_fraction(self) -> float:
        return (self.used - len(self.lru)) / self.capacity

    def match(self, hashes: Sequence[int]) -> int:
        n = 0
        for h in hashes:
            if h not in self.ref:
                break
            n += 1
        return n

    def pin(self, hashes: Sequence[int]) -> None:
        for h in hashes:
            if self.ref[h] == 0:
                del self.lru[h]
            self.ref[h] += 1

    def allocate(self, n: int) -> bool:
        """Reserve ``n`` anonymous blocks, evicting LRU cached blocks if needed."""
        while self.capacity - self.used < n and self.lru:
            h, _ = self.lru.popitem(last=False)
            del self.ref[h]
            self.evictions += 1
        if self.capacity - self.used < n:
            return False
        self.anon += n
        return True

    def register(self, h: int) -> None:
        """One anonymous block of a request now holds a full block with hash ``h`` (pinned)."""
        self.anon -= 1
        count = self.ref.get(h)
        if count is None:
            self.ref[h] = 1
        else:  # someone cached the same block meanwhile: share theirs, ours is freed
            if count == 0:
                del self.lru[h]
            self.ref[h] = count + 1

    def release(self, hashes: Sequence[int], anon: int) -> None:
        for h in hashes:
            count = self.ref[h] - 1
            self.ref[h] = count
            if count == 0:
                self.lru[h] = None
        self.anon -= anon

    def hashes(self) -> list[int]:
        return list(self.ref)
