"""KV working set of the programs on one engine, with shared prefix blocks counted once.

Built from the program records at each decision round and kept exact as programs are
paused, marked or placed within the round.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from shoal.router.programs.state import Program


class EngineLedger:
    """The programs counting on one engine and the tokens they hold together."""

    def __init__(self, engine: str, programs: Iterable[Program] = ()) -> None:
        self.engine = engine
        self.members: dict[tuple[str, str], Program] = {}
        self._hash_refs: Counter[int] = Counter()
        self._tokens = 0
        self._shared_tokens = 0
        for program in programs:
            self.add(program)

    @property
    def working_set(self) -> int:
        """Tokens held: every program's context minus the duplicates of shared blocks."""
        return max(0, self._tokens - self._shared_tokens)

    def add(self, program: Program) -> None:
        if program.key in self.members:
            return
        self.members[program.key] = program
        self._tokens += program.context_tokens
        for h in program.block_hashes:
            self._hash_refs[h] += 1
            if self._hash_refs[h] > 1:
                self._shared_tokens += program.hash_block_size

    def remove(self, program: Program) -> None:
        if self.members.pop(program.key, None) is None:
            return
        self._tokens -= program.context_tokens
        for h in program.block_hashes:
            if self._hash_refs[h] > 1:
                self._shared_tokens -= program.hash_block_size
            self._hash_refs[h] -= 1
            if self._hash_refs[h] <= 0:
                del self._hash_refs[h]

    def marginal(self, program: Program) -> int:
        """Tokens freed by removing a member (or added by adding a newcomer): its blocks
        that no other member holds."""
        member = program.key in self.members
        threshold = 1 if member else 0
        shared = sum(1 for h in program.block_hashes if self._hash_refs.get(h, 0) > threshold)
        return max(0, program.context_tokens - shared * program.hash_block_size)

    def marginal_of(self, tokens: int, block_hashes: tuple[int, ...], block_size: int) -> int:
        """Tokens a newcomer with this prompt would add."""
        shared = sum(1 for h in block_hashes if h in self._hash_refs)
        return max(0, tokens - shared * block_size)
