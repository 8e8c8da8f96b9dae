"""The trie, token trees and the speculation policy (torch-free parts)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from shoal.engine.sampling_params import SamplingParams
from shoal.engine.scheduler import ScheduledSequence
from shoal.engine.sequence import Sequence, SequenceStatus
from shoal.engine.spec.acceptance import AcceptanceModel
from shoal.engine.spec.config import SpeculationConfig
from shoal.engine.spec.drafter import Drafter
from shoal.engine.spec.speculator import Speculator, best_draft_size
from shoal.engine.spec.step_cost import StepCostModel
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
    assert tree.source == "own:2"
    learned = _running([40, 41, 20, 21], num_prompt=4)
    tree = drafter.propose(learned, 4, 4)
    assert tree is not None and tree.tokens == (22, 23) and tree.source == "global:2"
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
    first = len(seq.draft)
    spec.record(seq, seq.draft, max(seq.draft.depths))  # all accepted: the next draft is longer
    spec.propose([seq], max_model_len=100)
    assert seq.draft is not None and len(seq.draft) > first
    for _ in range(6):
        spec.record(seq, seq.draft, 0)  # misses: drafting stops, then a single-token probe
    spec.propose([seq], max_model_len=100)
    assert seq.draft is None
    spec.propose([seq], max_model_len=100)
    assert seq.draft is None
    spec.propose([seq], max_model_len=100)
    assert seq.draft is not None and len(seq.draft) == 1
    assert spec.stats.num_drafts == 7 and spec.stats.mean_accepted_length > 1


def test_draft_stays_inside_max_tokens_and_model_length() -> None:
    spec = Speculator(SpeculationConfig())
    seq = _running([1, 2, 3, 1, 2, 3, 1, 2], num_prompt=4)
    spec.propose([seq], max_model_len=10)
    assert seq.draft is not None and max(seq.draft.depths) <= 2


def test_draft_size_follows_acceptance_and_cost() -> None:
    def linear(per_token: float) -> Callable[[int], float]:
        return lambda k: 1.0 + per_token * k

    assert best_draft_size(0.05, linear(0.1), 8) == 0, "drafting a likely miss costs more than it saves"
    sizes = [best_draft_size(a, linear(0.1), 8) for a in (0.2, 0.4, 0.6, 0.8, 0.95)]
    assert sizes == sorted(sizes) and sizes[-1] == 8
    assert best_draft_size(0.6, linear(0.02), 8) > best_draft_size(0.6, linear(0.1), 8), "cheaper verification drafts more"
    assert best_draft_size(0.5, linear(0.1), 8, others=7.0) < best_draft_size(0.5, linear(0.1), 8), (
        "in a batch the extra rows slow everyone's tokens"
    )


def test_step_cost_model_learns_from_timings() -> None:
    model = StepCostModel(prior_token_cost=0.2)
    assert model.relative(1, 4) == pytest.approx(1.8), "nothing measured: the prior"
    for seconds in (0.010, 0.011, 0.009):
        model.observe(1, seconds)
    assert model.relative(1, 4) == pytest.approx(1.8), "unmeasured rows scale from the nearest measured"
    for seconds in (0.040, 0.040, 1.0):  # one outlier (another process ran) does not move the median
        model.observe(5, seconds)
    assert model.relative(1, 4) == pytest.approx(4.0)
    model.observe(2, 0.001)
    assert model.relative(1, 1) == pytest.approx(1.2), "fewer than 3 timings: still the prior"
    # an expensive machine makes the speculator draft less at the same acceptance
    cheap, dear = Speculator(SpeculationConfig()), Speculator(SpeculationConfig(), step_cost=model)
    sizes = []
    for spec in (cheap, dear):
        seq = _running([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3], num_prompt=9)
        for _ in range(5):
            spec.acceptance.update(seq.seq_id, "own:3", 6, 6)
        spec.propose([seq], max_model_len=100)
        sizes.append(0 if seq.draft is None else len(seq.draft))
    assert sizes[0] > sizes[1]


def test_engine_steps_feed_the_cost_model() -> None:
    spec = Speculator(SpeculationConfig())
    seq = _running([1, 2, 3, 1, 2, 3, 1, 2], num_prompt=4)
    tree = DraftTree.chain([3, 1, 2])
    prefill = _running([5, 6, 7], num_prompt=3)
    for _ in range(3):
        spec.observe_step([ScheduledSequence(seq, 1, None)], 0.01)
        spec.observe_step([ScheduledSequence(seq, 1, tree)], 0.05)
        spec.observe_step([ScheduledSequence(seq, 1, None), ScheduledSequence(prefill, 3, None)], 9.0)
    assert spec.step_cost.relative(1, 3) == pytest.approx(5.0), "steps with a prefill chunk are not decode costs"


class _WrongDrafter(Drafter):
    """Always drafts tokens the model will not produce."""

    def propose(self, seq: Sequence, budget: int, max_depth: int) -> DraftTree | None:
        return DraftTree(tuple([999] * min(budget, max_depth)), tuple(range(-1, min(budget, max_depth) - 1)), "wrong")


def _serve(spec: Speculator, seq: Sequence, steps: int, accept: Callable[[int], int]) -> int:
    """Run ``steps`` decode steps; ``accept(step)`` tokens of each draft are accepted. Returns drafts verified."""
    drafts = 0
    for step in range(steps):
        spec.propose([seq], max_model_len=10_000)
        if seq.draft is not None:
            drafts += 1
            spec.record(seq, seq.draft, min(accept(step), len(seq.draft)))
    return drafts


def test_drafts_that_always_miss_stop_drafting() -> None:
    spec = Speculator(SpeculationConfig())
    spec.drafter = _WrongDrafter()
    seq = _running([1, 2, 3], num_prompt=2)
    drafts = _serve(spec, seq, 200, lambda step: 0)
    assert drafts <= 20, f"{drafts} drafts in 200 steps: it should back off to rare single-token probes"
    assert spec.stats.num_draft_tokens <= 30


def test_low_acceptance_backs_off_when_verification_is_dear() -> None:
    # one extra row costs 1.3x a decode here; a draft whose first token is right 1 time in 5 loses
    cost = StepCostModel(prior_token_cost=0.3)
    spec = Speculator(SpeculationConfig(), step_cost=cost)
    spec.drafter = _WrongDrafter()
    seq = _running([1, 2, 3], num_prompt=2)
    steps = 400
    drafts = _serve(spec, seq, steps, lambda step: 1 if step % 5 == 0 else 0)
    assert drafts <= steps // 6
    time_spent = steps + 0.3 * spec.stats.num_draft_tokens
    tokens = steps + spec.stats.num_accepted_tokens
    assert tokens / time_spent >= 0.98, "speculating must not cost more than 2% of decode speed"


def test_back_off_ends_when_drafts_start_to_hit() -> None:
    spec = Speculator(SpeculationConfig())
    spec.drafter = _WrongDrafter()
    seq = _running([1, 2, 3], num_prompt=2)
    _serve(spec, seq, 100, lambda step: 0)
    hits = _serve(spec, seq, 100, lambda step: 8)  # the text turns predictable (a copy)
    assert hits >= 70


def test_acceptance_is_learned_per_draft_source() -> None:
    model = AcceptanceModel()
    assert model.estimate(1, "own:4") == model.estimate(1, "global:2")
    for _ in range(10):
        model.update(1, "own:4", 6, 6)
        model.update(1, "global:2", 0, 1)
    assert model.estimate(1, "own:4") > 0.9 and model.estimate(1, "global:2") < 0.1
    assert model.estimate(2, "own:4") > 0.8, "a new request starts from what the engine learned"
    model.release(1)
    assert model.estimate(1, "own:4") == model.engine_rate("own:4")


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="method"):
        SpeculationConfig(method="draft")
    with pytest.raises(ValueError, match="max_depth"):
        SpeculationConfig(max_draft_tokens=4, max_depth=5)
    with pytest.raises(ValueError, match="max_batch_size"):
        SpeculationConfig(max_batch_size=0)


def test_a_request_whose_drafts_miss_does_not_retry_every_new_source() -> None:
    model = AcceptanceModel()
    for _ in range(4):
        model.update(1, "own:1", 0, 1)
    assert model.estimate(1, "own:2") < 0.2, "the request's record stands in for a source the engine never saw"
    assert model.estimate(2, "own:2") == model.engine_rate("own:2"), "another request starts from the prior"


def test_drafts_keep_the_step_within_max_step_rows() -> None:
    # quantized weights on CPU: past the kernel's rows a GEMM with other rounding would verify
    spec = Speculator(SpeculationConfig(max_draft_tokens=8, max_depth=6, max_batch_size=8), max_step_rows=10)
    seqs = [_running([1, 2, 3, 1, 2, 3, 1, 2], num_prompt=4) for _ in range(4)]
    for seq in seqs:
        spec.acceptance.update(seq.seq_id, "own:3", 6, 6)  # drafts that always pay
    spec.propose(seqs, max_model_len=100)
    rows = sum(1 + (len(s.draft) if s.draft is not None else 0) for s in seqs)
    assert rows == 10 and seqs[0].draft is not None
    uncapped = Speculator(SpeculationConfig(max_draft_tokens=8, max_depth=6, max_batch_size=8))
    for seq in seqs:
        uncapped.acceptance.update(seq.seq_id, "own:3", 6, 6)
    uncapped.propose(seqs, max_model_len=100)
    assert sum(1 + (len(s.draft) if s.draft is not None else 0) for s in seqs) > 10
