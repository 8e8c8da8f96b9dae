"""Program KV retention: keep a finished program turn's cached blocks out of eviction for a TTL.

The router's program scheduler sends ``program_id`` + a retention time with each turn;
the next turn of the same program then finds its whole history in the prefix cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shoal.engine.block_manager import BlockManager
from shoal.engine.sequence import Sequence


@dataclass(frozen=True)
class ProgramPin:
    block_ids: tuple[int, ...]
    expires_at: float


class ProgramRetention:
    def __init__(self, block_manager: BlockManager, clock: Callable[[], float] = time.monotonic) -> None:
        self._bm = block_manager
        self._clock = clock
        self._pins: dict[str, ProgramPin] = {}

    @property
    def num_programs(self) -> int:
        return len(self._pins)

    @property
    def num_pinned_blocks(self) -> int:
        return len({b for pin in self._pins.values() for b in pin.block_ids})

    def on_finish(self, seq: Sequence) -> None:
        """Called before a finished sequence frees its blocks: pin its cached ones if asked to."""
        if not seq.program_id or not seq.retention_s or seq.retention_s <= 0:
            return
        cached = tuple(b for b in seq.block_table if self._bm.blocks[b].block_hash is not None)
        self._bm.pin(cached)
        old = self._pins.get(seq.program_id)
        self._pins[seq.program_id] = ProgramPin(cached, self._clock() + seq.retention_s)
        if old is not None:
            self._bm.unpin(old.block_ids)

    def release(self, program_id: str) -> int:
        """Drop a program's pin; returns how many blocks were unpinned."""
        pin = self._pins.pop(program_id, None)
        if pin is None:
            return 0
        self._bm.unpin(pin.block_ids)
        return len(pin.block_ids)

    def expire(self) -> None:
        now = self._clock()
        for program_id in [p for p, pin in self._pins.items() if pin.expires_at <= now]:
            self.release(program_id)

    def release_oldest(self) -> bool:
        """Under memory pressure with nothing running, give up the pin closest to expiry."""
        if not self._pins:
            return False
        program_id = min(self._pins, key=lambda p: self._pins[p].expires_at)
        self.release(program_id)
        return True
