"""The trie drafter: n-grams of the request's own prompt and output, then a trie learned from all traffic."""

from __future__ import annotations

from dataclasses import dataclass

from shoal.engine.sequence import Sequence
from shoal.engine.spec.config import SpeculationConfig
from shoal.engine.spec.drafter import Drafter, register_drafter
from shoal.engine.spec.token_tree import DraftTree, TreeBuilder
from shoal.engine.spec.trie import NgramTrie

MAX_MATCH = 4
"""Longest suffix of the sequence looked up in a trie (the longest match wins)."""
MIN_GLOBAL_MATCH = 2
"""Shortest suffix looked up in the global trie: one shared token says little across requests
(with 1, open-ended chat after traffic verified more wrong guesses than it gained)."""


@dataclass
class _Own:
    trie: NgramTrie
    seen: int = 0
    """Tokens of the sequence inserted so far (into its own trie and, for output, the global one)."""


class TrieDrafter(Drafter):
    """Drafts from the sequence's own text first (it repeats itself and its prompt), then fills
    the remaining budget from a global trie that every request's output feeds, so a pattern
    one request produced is drafted for the next (learning online from traffic). A draft's
    source names the trie that found its first nodes and the matched length (``own:4``,
    ``global:2``): the speculator learns how well each kind of draft is accepted."""

    def __init__(self, config: SpeculationConfig) -> None:
        self.config = config
        self.window = MAX_MATCH + config.max_depth
        self.global_trie = (
            NgramTrie(self.window, config.global_trie_nodes) if config.global_trie_nodes else None
        )
        self._own: dict[int, _Own] = {}

    def propose(self, seq: Sequence, budget: int, max_depth: int) -> DraftTree | None:
        own = self._sync(seq)
        builder = TreeBuilder(budget, max_depth)
        share = self.config.min_branch_share
        matched = own.trie.draft(seq.token_ids, builder, MAX_MATCH, share)
        source = f"own:{matched}"
        if self.global_trie is not None and not builder.full:
            found = self.global_trie.draft(seq.token_ids, builder, MAX_MATCH, share, MIN_GLOBAL_MATCH)
            if not matched:
                source = f"global:{found}"
        return builder.build(source)

    def release(self, seq: Sequence) -> None:
        self._sync(seq)
        self._own.pop(seq.seq_id, None)

    def _sync(self, seq: Sequence) -> _Own:
        own = self._own.get(seq.seq_id)
        if own is None:
            own = self._own[seq.seq_id] = _Own(NgramTrie(self.window))
        tokens = seq.token_ids
        if own.seen < len(tokens):
            own.trie.insert(tokens, own.seen)
            if self.global_trie is not None:
                # outputs only (with the prompt tail they continue): prompts are one-off text
                self.global_trie.insert(tokens, own.seen, first_start=seq.num_prompt_tokens - MAX_MATCH)
            own.seen = len(tokens)
        return own


register_drafter("trie", TrieDrafter)
