"""KV working set of the programs on one engine, with shared prefix blocks counted once.

Built from the program records at each decision round and kept exact as programs are
paused, marked or placed within the round. The programs on one engine come from one
pool, so their block hashes share one block size.
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
        self._hash_count = 0
        """Block hashes over all members, duplicates included."""
        self._tokens = 0
        self._block_size = 0
        for program in programs:
            self.add(program)

    @property
    def working_set(self) -> int:
        """Tokens held: every program's context minus the duplicates of shared blocks."""
        duplicates = self._hash_count - len(self._hash_refs)
        return max(0, self._tokens - duplicates * self._block_size)

    def add(self, program: Program) -> None:
        if program.key in self.members:
            return
        self.members[program.key] = program
        self._tokens += program.context_tokens
        if program.block_hashes:
            self._block_size = self._block_size or program.hash_block_size
            self._hash_refs.update(program.block_hashes)
            self._hash_count += len(program.block_hashes)

    def remove(self, program: Program) -> None:
        if self.members.pop(program.key, None) is None:
            return
        self._tokens -= program.context_tokens
        refs = self._hash_refs
        for h in program.block_hashes:
            left = refs[h] - 1
            if left > 0:
                refs[h] = left
            else:
                del refs[h]
        self._hash_count -= len(program.block_hashes)

    def marginal(self, program: Program) -> int:
        """Tokens freed by removing a member: its blocks that no other member holds."""
        refs = self._hash_refs
        shared = sum(1 for h in program.block_hashes if refs.get(h, 0) > 1)
        return max(0, program.context_tokens - shared * program.hash_block_size)

    def marginal_of(self, tokens: int, block_hashes: tuple[int, ...], block_size: int) -> int:
        """Tokens a newcomer with this prompt would add: its blocks no member holds yet."""
        shared = len(self._hash_refs.keys() & set(block_hashes)) if block_hashes else 0
        return max(0, tokens - shared * block_size)
