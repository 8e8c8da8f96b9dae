"""Block manager: allocation, prefix hits, LRU eviction, reference counts (no torch)."""

from __future__ import annotations

import pytest

from shoal.engine.block_hash import prefix_block_hashes
from shoal.engine.block_manager import BlockManager
from shoal.engine.sampling_params import SamplingParams
from shoal.engine.sequence import Sequence


def make_seq(tokens: list[int], request_id: str = "r") -> Sequence:
    return Sequence(request_id, tokens, SamplingParams())


def finish_prefill(bm: BlockManager, seq: Sequence) -> None:
    seq.num_computed_tokens = len(seq.token_ids)
    bm.register_computed_blocks(seq)


def test_allocate_and_free_returns_every_block() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(list(range(10)))
    assert bm.can_allocate(seq)
    bm.allocate(seq)
    assert len(seq.block_table) == 3
    assert bm.num_free_blocks == 5
    bm.free(seq)
    assert bm.num_free_blocks == 8
    assert seq.block_table == []


def test_prefix_hit_shares_blocks_and_counts_tokens() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    first = make_seq(list(range(12)) + [99], "a")
    bm.allocate(first)
    finish_prefill(bm, first)
    second = make_seq(list(range(12)) + [77, 78], "b")
    bm.allocate(second)
    assert second.num_cached_tokens == 12
    assert second.num_computed_tokens == 12
    assert second.block_table[:3] == first.block_table[:3]
    assert all(bm.blocks[b].ref_count == 2 for b in first.block_table[:3])
    assert bm.prefix_cache_hits == 12
    assert bm.prefix_cache_queries == 13 + 14


def test_full_hit_still_leaves_one_token_to_compute() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    first = make_seq(list(range(8)))
    bm.allocate(first)
    finish_prefill(bm, first)
    again = make_seq(list(range(8)))
    bm.allocate(again)
    assert again.num_computed_tokens == 4  # the last block is recomputed for its logits


def test_hash_chain_matches_router_module() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    seq = make_seq(list(range(9)))
    bm.allocate(seq)
    finish_prefill(bm, seq)
    assert seq.block_hashes == prefix_block_hashes(list(range(9)), 4)
    assert set(bm.cached_block_hashes()) == set(seq.block_hashes)


def test_token_check_rejects_hash_collision() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    seq = make_seq(list(range(9)))
    bm.allocate(seq)
    finish_prefill(bm, seq)
    bm.free(seq)
    # corrupt the stored tokens: a lookup must not trust the hash alone
    block = bm.blocks[bm._hash_to_block[prefix_block_hashes(list(range(9)), 4)[0]]]
    block.token_ids = (7, 7, 7, 7)
    again = make_seq(list(range(9)))
    bm.allocate(again)
    assert again.num_cached_tokens == 0


def test_lru_evicts_oldest_free_cached_block_first() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    old = make_seq([1, 2, 3])
    bm.allocate(old)
    finish_prefill(bm, old)
    bm.free(old)
    new = make_seq([5, 6, 7])
    bm.allocate(new)
    finish_prefill(bm, new)
    bm.free(new)
    assert bm.num_free_blocks == 4
    # needs 3 blocks: the 2 uncached free blocks go first, then the least recently freed cached one
    third = make_seq([9, 9, 9, 9, 9])
    bm.allocate(third)
    assert third.num_cached_tokens == 0
    hit_new = make_seq([5, 6, 8])
    assert bm.match_prefix(hit_new), "recently freed prefix must survive"
    hit_old = make_seq([1, 2, 8])
    assert not bm.match_prefix(hit_old), "oldest cached block is evicted first"


def test_uncached_free_blocks_are_used_before_evicting() -> None:
    bm = BlockManager(num_blocks=6, block_size=2)
    seq = make_seq([1, 2, 3])
    bm.allocate(seq)
    finish_prefill(bm, seq)
    bm.free(seq)
    other = make_seq([4, 5, 6, 7, 8])  # needs 3 blocks; 4 uncached are free
    bm.allocate(other)
    assert bm.match_prefix(make_seq([1, 2, 3]))


def test_ref_counts_and_pins_keep_blocks() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(list(range(9)))
    bm.allocate(seq)
    finish_prefill(bm, seq)
    pinned = list(seq.block_table[:2])
    bm.pin(pinned)
    bm.free(seq)
    assert bm.num_free_blocks == 6
    bm.unpin(pinned)
    assert bm.num_free_blocks == 8
    with pytest.raises(RuntimeError):
        bm.unpin(pinned)


def test_fork_shares_full_blocks() -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    parent = make_seq(list(range(10)))
    bm.allocate(parent)
    finish_prefill(bm, parent)
    child = Sequence("r", list(range(10)), SamplingParams(), index=1)
    assert bm.fork(parent, child)
    assert child.block_table[:2] == parent.block_table[:2]
    assert child.block_table[2] != parent.block_table[2]
    assert child.num_computed_tokens == 8
    bm.free(parent)
    bm.free(child)
    assert bm.num_free_blocks == 16


def test_no_prefix_caching_never_hits() -> None:
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    seq = make_seq(list(range(9)))
    bm.allocate(seq)
    finish_prefill(bm, seq)
    assert bm.cached_block_hashes() == []
    assert bm.match_prefix(make_seq(list(range(9)))) == []


def test_can_allocate_counts_free_hit_blocks() -> None:
    bm = BlockManager(num_blocks=3, block_size=2)
    seq = make_seq([1, 2, 3, 4, 5])
    bm.allocate(seq)
    finish_prefill(bm, seq)
    bm.free(seq)
    assert bm.can_allocate(make_seq([1, 2, 3, 4, 5]))
    assert not bm.can_allocate(make_seq([1, 2, 3, 4, 5, 6, 7]))
