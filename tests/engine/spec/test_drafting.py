"""The trie, token trees and the speculation policy (torch-free parts)."""

from __future__ import annotations

import threading

import pytest

from shoal.engine.sampling_params import SamplingParams
from shoal.engine.sequence import Sequence, SequenceStatus
from shoal.engine.spec.config import SpeculationConfig
from shoal.engine.spec.speculator import TOKEN_COST, Speculator, best_draft_size
from shoal.engine.spec.token_tree import ROOT, DraftTree, TreeBuilder
from shoal.engine.spec.trie import NgramTrie
from shoal.engine.spec.trie_drafter import TrieDrafter


def _draft(trie: NgramTrie, context: list[int], budget: int = 8, depth: int = 4, share: float = 0.0) -> DraftTree | None:
    builder = TreeBuilder(budget, depth)
    trie.draft(context, builder, max_match=3, min_share=share)
    return builder.build()


def test_trie_drafts_what_followed_the_longest_match() -> None:
    trie = NgramTrie(window=6)
    trie.insert([1, 2, 3, 4, 5, 9, 2, 3, 7, 8])
    tree = _draft(trie, [2, 3], depth=2)
    assert tree is not None
    # after (2, 3) came 4 then 5, and 7 then 8: two branches, two levels each
    paths = {tuple(tree.tokens[n] for n in reversed(tree.ancestors_or_self(i))) for i in range(len(tree))}
    assert paths == {(4,), (4, 5), (7,), (7, 8)}
    # the longer match (9, 2, 3) wins: only what followed it
    tree = _draft(trie, [9, 2, 3], depth=2)
    assert tree is not None and tree.tokens == (7, 8)


def test_frequent_branches_come_first_and_weak_ones_are_pruned() -> None:
    trie = NgramTrie(window=4)
    trie.insert([5, 1] * 1 + [5, 2] * 5 + [5, 3])
    tree = _draft(trie, [5], budget=1, depth=1)
    assert tree is not None and tree.tokens == (2,)
    tree = _draft(trie, [5], budget=8, depth=1, share=0.2)
    assert tree is not None and set(tree.tokens) == {2}


def test_trie_fed_as_it_grows_counts_each_window_once() -> None:
    whole, grown = NgramTrie(window=4), NgramTrie(window=4)
    tokens = [1, 2, 3, 1, 2, 4, 1, 2, 3, 5]
    whole.insert(tokens)
    seen = 0
    for end in (3, 4, 7, 10):
        grown.insert(tokens[:end], seen=seen)
        seen = end
    assert _draft(grown, [1, 2]) == _draft(whole, [1, 2])
    assert len(grown) == len(whole)


def test_global_trie_memory_is_bounded_and_keeps_the_frequent() -> None:
    trie = NgramTrie(window=4, max_nodes=200)
    for _ in range(20):
        trie.insert([7, 8, 9, 10])
    for start in range(0, 4000, 4):
        trie.insert(list(range(1000 + start, 1004 + start)))
        assert len(trie) <= 200
    tree = _draft(trie, [7], depth=3)
    assert tree is not None and tree.tokens == (8, 9, 10), "the frequent n-gram was evicted"


def test_trie_is_safe_to_feed_from_another_thread() -> None:
    trie = NgramTrie(window=5, max_nodes=500)
    errors: list[BaseException] = []

    def feed(offset: int) -> None:
        try:
            for i in range(300):
                trie.insert([offset + (i * 7 + j) % 50 for j in range(12)])
                _draft(trie, [offset + i % 50])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=feed, args=(k * 100,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(trie) <= 500


def test_tree_builder_merges_shared_prefixes_within_budget() -> None:
    builder = TreeBuilder(budget=4, max_depth=3)
    builder.add_path([1, 2, 3])
    builder.add_path([1, 2, 4, 5])
    builder.add_path([6])
    tree = builder.build()
    assert tree == DraftTree((1, 2, 3, 4), (ROOT, 0, 1, 1))
    assert tree.depths == [1, 2, 3, 3]
    assert tree.truncated(2) == DraftTree((1, 2), (ROOT, 0))
    with pytest.raises(ValueError, match="parents must come first"):
        DraftTree((1, 2), (1, ROOT))


def _running(tokens: list[int], num_prompt: int, **params: object) -> Sequence:
    seq = Sequence("r", tokens[:num_prompt], SamplingParams(max_tokens=100, **params))  # type: ignore[arg-type]
    seq.token_ids.extend(tokens[num_prompt:])
    seq.num_computed_tokens = len(seq.token_ids) - 1
    seq.status = SequenceStatus.RUNNING
    return seq


def test_drafter_uses_own_text_then_traffic() -> None:
    config = SpeculationConfig(max_draft_tokens=4, max_depth=4)
    drafter = TrieDrafter(config)
    first = _running([1, 2, 3, 4, 5, 6, 20, 21, 22, 23], num_prompt=6)
    drafter.release(first)  # its output (20..23) is learned by the global trie
    own = _running([9, 1, 2, 3, 8, 1, 2], num_prompt=7)
    tree = drafter.propose(own, 4, 4)
    assert tree is not None and tree.tokens[:1] == (3,)  # its own prompt: 1 2 -> 3
    learned = _running([40, 41, 20, 21], num_prompt=4)
    tree = drafter.propose(learned, 4, 4)
    assert tree is not None and tree.tokens == (22, 23)
    one_shared_token = _running([40, 41, 42, 21], num_prompt=4)
    assert drafter.propose(one_shared_token, 4, 4) is None, "a 1-token match is too weak across requests"


def test_policy_batch_size_eligibility_and_adaptive_budget() -> None:
    spec = Speculator(SpeculationConfig(max_draft_tokens=8, max_depth=6, max_batch_size=2))
    seqs = [_running([1, 2, 3, 1, 2, 3, 1, 2], num_prompt=4) for _ in range(3)]
    spec.propose(seqs, max_model_len=100)
    assert all(s.draft is None for s in seqs), "3 decodes > max_batch_size: no speculation"
    spec.propose(seqs[:2], max_model_len=100)
    assert all(s.draft is not None for s in seqs[:2])
    penalised = _running([1, 2, 3, 1, 2, 3, 1, 2], num_prompt=4, repetition_penalty=1.2)
    early = _running([1, 2, 3, 1, 2, 3, 1, 2], num_prompt=4, min_tokens=10)
    spec.propose([penalised, early], max_model_len=100)
    assert penalised.draft is None and early.draft is None
    seq = seqs[0]
    assert seq.draft is not None
    assert spec.budget(seq) == best_draft_size(0.6, TOKEN_COST["cpu"], 8)  # no history yet
    full = max(seq.draft.depths)
    spec.record(seq, seq.draft, full)  # all accepted: the next draft is as long as allowed
    assert spec.budget(seq) == 8
    spec.record(seq, seq.draft, 0)  # a miss: the draft shrinks and the request sits out a step
    assert spec.budget(seq) < 8
    spec.propose([seq], max_model_len=100)
    assert seq.draft is None
    spec.propose([seq], max_model_len=100)
    assert seq.draft is not None
    assert spec.stats.num_drafts == 2 and spec.stats.num_accepted_tokens == full
    assert spec.stats.mean_accepted_length == 1 + full / 2


def test_draft_stays_inside_max_tokens_and_model_length() -> None:
    spec = Speculator(SpeculationConfig())
    seq = _running([1, 2, 3, 1, 2, 3, 1, 2], num_prompt=4)
    spec.propose([seq], max_model_len=10)
    assert seq.draft is not None and max(seq.draft.depths) <= 2


def test_draft_size_follows_acceptance_and_cost() -> None:
    assert best_draft_size(0.05, 0.1, 8) == 0, "drafting a likely miss costs more than it saves"
    sizes = [best_draft_size(a, 0.1, 8) for a in (0.2, 0.4, 0.6, 0.8, 0.95)]
    assert sizes == sorted(sizes) and sizes[-1] == 8
    assert best_draft_size(0.6, 0.02, 8) > best_draft_size(0.6, 0.1, 8), "cheaper verification drafts more"


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="method"):
        SpeculationConfig(method="draft")
    with pytest.raises(ValueError, match="max_depth"):
        SpeculationConfig(max_draft_tokens=4, max_depth=5)
    with pytest.raises(ValueError, match="max_batch_size"):
        SpeculationConfig(max_batch_size=0)
