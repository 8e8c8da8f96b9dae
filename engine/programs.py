"""Program KV retention: keep a finished program turn's cached blocks out of eviction for a TTL.

The router's program scheduler sends ``program_id`` + a retention time with each turn;
the next turn of the same program then finds its whole history in the prefix cache.

Pins are keyed by ``(tenant, program_id)``, so one tenant can neither overwrite nor
release another's pin by reusing its id. Each tenant's pins share a block quota: a pin
past it releases that tenant's oldest pins first. Retention is capped by the engine.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from shoal.engine.block_manager import BlockManager
from shoal.engine.sequence import Sequence

ProgramKey = tuple[str, str]
"""(tenant, program_id)."""


@dataclass(frozen=True)
class ProgramPin:
    block_ids: tuple[int, ...]
    expires_at: float
    created: int
    """Order of creation (oldest pins of a tenant go first when its quota is exceeded)."""


class ProgramRetention:
    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_blocks_per_tenant: int,
        max_retention_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_blocks_per_tenant < 0:
            raise ValueError(f"max_blocks_per_tenant must be >= 0, got {max_blocks_per_tenant}")
        if max_retention_s < 0:
            raise ValueError(f"max_retention_s must be >= 0, got {max_retention_s}")
        self._bm = block_manager
        self._clock = clock
        self.max_blocks_per_tenant = max_blocks_per_tenant
        self.max_retention_s = max_retention_s
        self._pins: dict[ProgramKey, ProgramPin] = {}
        self._order = itertools.count()

    @property
    def num_programs(self) -> int:
        return len(self._pins)

    @property
    def num_pinned_blocks(self) -> int:
        return len({b for pin in self._pins.values() for b in pin.block_ids})

    def tenant_blocks(self, tenant: str) -> int:
        """Distinct blocks pinned by ``tenant``'s programs."""
        return len({b for (t, _), pin in self._pins.items() if t == tenant for b in pin.block_ids})

    def on_finish(self, seq: Sequence) -> None:
        """Called before a finished sequence frees its blocks: pin its cached ones if asked to."""
        if not seq.program_id or not seq.retention_s or seq.retention_s <= 0:
            return
        retention = min(seq.retention_s, self.max_retention_s)
        quota = self.max_blocks_per_tenant
        if retention <= 0 or quota == 0:
            return
        # the leading blocks are the ones a next turn can reuse: keep those when the quota cuts
        cached = tuple(b for b in seq.block_table if self._bm.blocks[b].block_hash is not None)[:quota]
        key = (seq.tenant, seq.program_id)
        self._bm.pin(cached)
        old = self._pins.get(key)
        self._pins[key] = ProgramPin(cached, self._clock() + retention, next(self._order))
        if old is not None:
            self._bm.unpin(old.block_ids)
        self._enforce_quota(seq.tenant, keep=key)

    def release(self, program_id: str, tenant: str = "") -> int:
        """Drop ``tenant``'s pin of a program; returns how many blocks were unpinned."""
        return self._drop((tenant, program_id))

    def expire(self) -> None:
        now = self._clock()
        for key in [k for k, pin in self._pins.items() if pin.expires_at <= now]:
            self._drop(key)

    def release_oldest(self) -> bool:
        """Under memory pressure with nothing running, give up the pin closest to expiry."""
        if not self._pins:
            return False
        self._drop(min(self._pins, key=lambda k: self._pins[k].expires_at))
        return True

    def _drop(self, key: ProgramKey) -> int:
        pin = self._pins.pop(key, None)
        if pin is None:
            return 0
        self._bm.unpin(pin.block_ids)
        return len(pin.block_ids)

    def _enforce_quota(self, tenant: str, keep: ProgramKey) -> None:
        while self.tenant_blocks(tenant) > self.max_blocks_per_tenant:
            others = [k for k in self._pins if k[0] == tenant and k != keep]
            if not others:
                return  # only ``keep`` is left, and it was cut to the quota
            self._drop(min(others, key=lambda k: self._pins[k].created))
