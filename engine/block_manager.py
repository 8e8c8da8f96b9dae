"""Paged KV block allocation with prefix caching (torch-free).

Blocks are reference counted: a block may be shared by several sequences (prefix-cache
hits, n>1 samples) and by program pins. A free block that still holds a registered
hash stays in the prefix cache until it is reused; free blocks without a hash are
handed out first, then cached ones in LRU order.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from shoal.engine.block_hash import ROOT_HASH, hash_block
from shoal.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    token_ids: tuple[int, ...] = ()


class NoFreeBlocksError(RuntimeError):
    """Raised when an allocation was attempted without checking capacity first."""


class BlockManager:
    """Owns the KV pool's block ids; the model runner owns the tensors they index."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free_uncached: deque[int] = deque(range(num_blocks))
        self._free_cached: OrderedDict[int, None] = OrderedDict()
        self._hash_to_block: dict[int, int] = {}
        self.prefix_cache_queries = 0
        """Prompt tokens looked up in the prefix cache (cumulative)."""
        self.prefix_cache_hits = 0
        """Prompt tokens found in the prefix cache (cumulative)."""

    # ---- capacity -------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free_uncached) + len(self._free_cached)

    @property
    def num_cached_free_blocks(self) -> int:
        """Free blocks that still hold a reusable prefix (evicted last, LRU)."""
        return len(self._free_cached)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def cached_block_hashes(self) -> list[int]:
        """Hashes of every block currently in the prefix cache (used or free)."""
        return list(self._hash_to_block)

    # ---- admission ------------------------------------------------------------------
    def match_prefix(self, seq: Sequence) -> list[tuple[int, int]]:
        """(hash, block_id) of the leading cached blocks of ``seq``.

        At least one token is always left to compute: the step that computes it
        produces the logits for the next token.
        """
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        max_blocks = (len(seq.token_ids) - 1) // bs
        hits: list[tuple[int, int]] = []
        parent = ROOT_HASH
        for i in range(max_blocks):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            block_hash = hash_block(parent, tokens, seq.cache_salt)
            block_id = self._hash_to_block.get(block_hash)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            hits.append((block_hash, block_id))
            parent = block_hash
        return hits

    def can_allocate(self, seq: Sequence, watermark: int = 0) -> bool:
        hits = self.match_prefix(seq)
        free_hits = sum(1 for _, bid in hits if self.blocks[bid].ref_count == 0)
        needed = seq.num_blocks_needed(self.block_size) - len(hits)
        return needed + watermark <= self.num_free_blocks - free_hits

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` blocks for all its tokens, reusing cached prefix blocks."""
        assert not seq.block_table, "sequence already holds blocks"
        hits = self.match_prefix(seq)
        for _, block_id in hits:
            self._ref(block_id)
        seq.block_table = [bid for _, bid in hits]
        seq.block_hashes = [h for h, _ in hits]
        needed = seq.num_blocks_needed(self.block_size) - len(hits)
        if needed > self.num_free_blocks:
            self.free(seq)
            raise NoFreeBlocksError(f"need {needed} blocks, {self.num_free_blocks} free")
        seq.block_table.extend(self._take_free_block() for _ in range(needed))
        cached = len(hits) * self.block_size
        seq.num_computed_tokens = cached
        seq.num_cached_tokens = cached
        if self.enable_prefix_caching:
            self.prefix_cache_queries += len(seq.token_ids)
            self.prefix_cache_hits += cached

    def can_append(self, seq: Sequence, extra: int = 0) -> bool:
        needed = seq.num_blocks_needed(self.block_size, len(seq) + extra)
        return needed - len(seq.block_table) <= self.num_free_blocks

    def append_slots(self, seq: Sequence, extra: int = 0) -> None:
        """Grow ``seq``'s block table to cover all its tokens (decode) and ``extra`` drafted ones."""
        missing = seq.num_blocks_needed(self.block_size, len(seq) + extra) - len(seq.block_table)
        if missing > self.num_free_blocks:
            raise NoFreeBlocksError(f"need {missing} blocks, {self.num_free_blocks} free")
        seq.block_table.extend(self._take_free_block() for _ in range(missing))

    def trim(self, seq: Sequence) -> None:
        """Free the blocks past ``seq``'s tokens (they held drafted tokens that were rejected)."""
        keep = seq.num_blocks_needed(self.block_size)
        while len(seq.block_table) > keep:
            self._unref(seq.block_table.pop())

    def fork(self, parent: Sequence, child: Sequence) -> bool:
        """Share ``parent``'s full computed blocks with ``child`` (n>1 samples).

        The child recomputes the parent's partial last block into a block of its own.
        Returns False (and holds nothing) when the child's own blocks do not fit.
        """
        bs = self.block_size
        shared = min(parent.num_computed_tokens, child.num_prompt_tokens) // bs
        own = child.num_blocks_needed(bs) - shared
        if own > self.num_free_blocks:
            return False
        for block_id in parent.block_table[:shared]:
            self._ref(block_id)
        child.block_table = parent.block_table[:shared] + [self._take_free_block() for _ in range(own)]
        child.block_hashes = parent.block_hashes[:shared]
        child.num_computed_tokens = shared * bs
        child.num_cached_tokens = parent.num_cached_tokens
        return True

    # ---- bookkeeping after a step -----------------------------------------------------
    def register_computed_blocks(self, seq: Sequence) -> None:
        """Enter ``seq``'s newly completed full blocks into the prefix cache."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        for i in range(len(seq.block_hashes), full):
            parent = seq.block_hashes[-1] if seq.block_hashes else ROOT_HASH
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            block_hash = hash_block(parent, tokens, seq.cache_salt)
            seq.block_hashes.append(block_hash)
            block = self.blocks[seq.block_table[i]]
            if block_hash in self._hash_to_block or block.block_hash is not None:
                continue  # same content already cached in another block (computed concurrently)
            block.block_hash = block_hash
            block.token_ids = tokens
            self._hash_to_block[block_hash] = block.block_id

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s blocks; the tail goes first so prefixes outlive suffixes in the LRU."""
        for block_id in reversed(seq.block_table):
            self._unref(block_id)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0

    def pin(self, block_ids: Iterable[int]) -> None:
        """Hold an extra reference so these blocks cannot be evicted (program retention)."""
        for block_id in block_ids:
            self._ref(block_id)

    def unpin(self, block_ids: Iterable[int]) -> None:
        for block_id in block_ids:
            self._unref(block_id)

    # ---- internals ----------------------------------------------------------------------
    def _take_free_block(self) -> int:
        if self._free_uncached:
            block_id = self._free_uncached.popleft()
        elif self._free_cached:
            block_id, _ = self._free_cached.popitem(last=False)
            block = self.blocks[block_id]
            assert block.block_hash is not None
            del self._hash_to_block[block.block_hash]
            block.block_hash = None
            block.token_ids = ()
        else:
            raise NoFreeBlocksError("no free KV blocks")
        self.blocks[block_id].ref_count = 1
        return block_id

    def _ref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            if block.block_hash is not None:
                del self._free_cached[block_id]
            else:
                self._free_uncached.remove(block_id)
        block.ref_count += 1

    def _unref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count <= 0:
            raise RuntimeError(f"block {block_id} freed more often than allocated")
        block.ref_count -= 1
        if block.ref_count == 0:
            if block.block_hash is not None:
                self._free_cached[block_id] = None
            else:
                self._free_uncached.append(block_id)
