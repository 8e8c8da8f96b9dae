"""KV working set of the programs on each engine, with shared prefix blocks counted once.

``KvAccounts`` keeps one ``EngineLedger`` per engine in step with the program records: the
scheduler calls ``sync`` after every change to a program, and pins that run out leave their
ledger on the next ``expire``. Each event then costs the programs it touches, not all of
them. The programs on one engine come from one pool, so their block hashes share a block size.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Mapping

from shoal.router.programs.state import Program

ProgramKey = tuple[str, str]


class EngineLedger:
    """The programs counting on one engine and the tokens they hold together."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.members: dict[ProgramKey, Program] = {}
        self._entries: dict[ProgramKey, tuple[int, tuple[int, ...]]] = {}
        """What each member added (context tokens, block hashes), taken back as it was."""
        self._hash_refs: Counter[int] = Counter()
        self._hash_count = 0
        """Block hashes over all members, duplicates included."""
        self._tokens = 0
        self._block_size = 0
        self.version = 0
        """Bumped on every change: lets callers reuse what they computed against this ledger."""

    @property
    def working_set(self) -> int:
        """Tokens held: every program's context minus the duplicates of shared blocks."""
        duplicates = self._hash_count - len(self._hash_refs)
        return max(0, self._tokens - duplicates * self._block_size)

    def add(self, program: Program) -> None:
        if program.key in self.members:
            return
        hashes = program.block_hashes
        self.version += 1
        self.members[program.key] = program
        self._entries[program.key] = (program.context_tokens, hashes)
        self._tokens += program.context_tokens
        if hashes:
            self._block_size = self._block_size or program.hash_block_size
            self._hash_refs.update(hashes)
            self._hash_count += len(hashes)

    def remove(self, program: Program) -> None:
        if self.members.pop(program.key, None) is None:
            return
        tokens, hashes = self._entries.pop(program.key)
        self.version += 1
        self._tokens -= tokens
        refs = self._hash_refs
        for h in hashes:
            left = refs[h] - 1
            if left > 0:
                refs[h] = left
            else:
                del refs[h]
        self._hash_count -= len(hashes)

    def marginal(self, program: Program) -> int:
        """Tokens freed by removing a member: its blocks that no other member holds."""
        tokens, hashes = self._entries.get(program.key, (program.context_tokens, program.block_hashes))
        refs = self._hash_refs
        shared = sum(1 for h in hashes if refs.get(h, 0) > 1)
        return max(0, tokens - shared * program.hash_block_size)

    def marginal_of(self, tokens: int, block_hashes: frozenset[int], block_size: int) -> int:
        """Tokens a newcomer with this prompt would add: its blocks no member holds yet."""
        shared = len(self._hash_refs.keys() & block_hashes) if block_hashes else 0
        return max(0, tokens - shared * block_size)


class KvAccounts:
    """Every engine's ledger, kept in step with the programs (``sync``) and the clock (``expire``)."""

    def __init__(self) -> None:
        self.ledgers: dict[str, EngineLedger] = {}
        self._counted_on: dict[ProgramKey, str] = {}
        self._pin_ends: list[tuple[float, int, ProgramKey]] = []
        self._order = itertools.count()

    def sync(self, program: Program, now: float) -> None:
        """Make the program's entry match its record: counted where its KV is, with its context."""
        engine = self._counted_on.pop(program.key, None)
        if engine is not None:
            self.ledgers[engine].remove(program)
        if not program.counts(now):
            return
        assert program.engine is not None
        ledger = self.ledgers.get(program.engine)
        if ledger is None:
            ledger = self.ledgers[program.engine] = EngineLedger(program.engine)
        ledger.add(program)
        self._counted_on[program.key] = program.engine
        if not program.calls:  # counted while pinned: leaves when the pin runs out
            heapq.heappush(self._pin_ends, (program.pinned_until, next(self._order), program.key))

    def forget(self, program: Program) -> None:
        engine = self._counted_on.pop(program.key, None)
        if engine is not None:
            self.ledgers[engine].remove(program)

    def expire(self, programs: Mapping[ProgramKey, Program], now: float) -> None:
        """Pins that ran out by ``now`` stop counting."""
        while self._pin_ends and self._pin_ends[0][0] <= now:
            _, _, key = heapq.heappop(self._pin_ends)
            program = programs.get(key)
            if program is not None and key in self._counted_on and not program.counts(now):
                self.forget(program)

    def next_pin_end(self) -> float | None:
        return self._pin_ends[0][0] if self._pin_ends else None

    def rebuilt(self, programs: Mapping[ProgramKey, Program], now: float) -> dict[str, int]:
        """Working sets recomputed from scratch (an audit of the kept ones)."""
        fresh: dict[str, EngineLedger] = {}
        for program in programs.values():
            if program.counts(now):
                assert program.engine is not None
                fresh.setdefault(program.engine, EngineLedger(program.engine)).add(program)
        return {url: ledger.working_set for url, ledger in fresh.items() if ledger.members}
