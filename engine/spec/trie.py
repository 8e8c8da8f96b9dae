"""An n-gram trie: every window of a token stream, counted, with bounded memory.

Walking the trie along the last few tokens of a sequence reaches the continuations seen
after them before; the most frequent branches become a draft (Lookahead / PIA).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Sequence

from shoal.engine.spec.token_tree import ROOT, TreeBuilder


class _Node:
    __slots__ = ("children", "count", "last_used")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.count = 0
        self.last_used = 0


class NgramTrie:
    """Counts of every ``window``-token span inserted, as a prefix tree.

    ``max_nodes`` bounds memory: past it, the least-observed leaves are evicted (ties: least
    recently used), down to 90% of the bound. ``None`` means unbounded (a request's own trie,
    freed with the request). Thread-safe: one lock guards inserts, drafts and eviction.
    """

    def __init__(self, window: int, max_nodes: int | None = None) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self.window = window
        self.max_nodes = max_nodes
        self._root = _Node()
        self._num_nodes = 0
        self._clock = itertools.count(1)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Nodes held (the root excluded)."""
        return self._num_nodes

    def insert(self, tokens: Sequence[int], seen: int = 0, first_start: int = 0) -> None:
        """Count the windows of ``tokens`` starting at or after ``first_start``, given that the
        first ``seen`` tokens were inserted before: only occurrences ending past ``seen`` count,
        so a stream can be fed as it grows (its last windows fill in over later calls)."""
        with self._lock:
            now = next(self._clock)
            for i in range(max(seen - self.window + 1, first_start, 0), len(tokens)):
                node = self._root
                for offset, token in enumerate(tokens[i : i + self.window]):
                    child = node.children.get(token)
                    if child is None:
                        child = node.children[token] = _Node()
                        self._num_nodes += 1
                    if i + offset >= seen:
                        child.count += 1
                    child.last_used = now
                    node = child
            if self.max_nodes is not None and self._num_nodes > self.max_nodes:
                self._evict(int(self.max_nodes * 0.9))

    def draft(
        self, context: Sequence[int], builder: TreeBuilder, max_match: int, min_share: float, min_match: int = 1
    ) -> int:
        """Add the likeliest continuations of ``context``'s longest matched suffix to ``builder``.

        Best-first over the trie below the match: a branch's score is the product of its
        shares of its siblings' counts; branches under ``min_share`` are pruned. A suffix shorter
        than ``min_match`` does not count as a match. Returns the matched suffix length (0: none).
        """
        with self._lock:
            matched, node = self._match(context, max_match, min_match)
            if node is None:
                return 0
            now = next(self._clock)
            order = itertools.count()
            heap: list[tuple[float, int, _Node, int, int]] = []
            self._push_children(heap, order, node, 1.0, ROOT, min_share)
            while heap and not builder.full:
                neg_score, _, child, parent, token = heapq.heappop(heap)
                index = builder.child(parent, token)
                if index is None:
                    continue
                child.last_used = now
                self._push_children(heap, order, child, -neg_score, index, min_share)
            return matched

    def _match(self, context: Sequence[int], max_match: int, min_match: int) -> tuple[int, _Node | None]:
        for length in range(min(max_match, len(context), self.window - 1), max(min_match, 1) - 1, -1):
            node: _Node | None = self._root
            for token in context[len(context) - length :]:
                node = node.children.get(token) if node is not None else None
                if node is None:
                    break
            if node is not None and node.children:
                return length, node
        return 0, None

    @staticmethod
    def _push_children(
        heap: list[tuple[float, int, _Node, int, int]],
        order: itertools.count[int],
        node: _Node,
        score: float,
        index: int,
        min_share: float,
    ) -> None:
        total = sum(c.count for c in node.children.values())
        for token, child in node.children.items():
            share = child.count / total
            if share >= min_share:
                heapq.heappush(heap, (-score * share, next(order), child, index, token))

    def _evict(self, target: int) -> None:
        while self._num_nodes > target:
            leaves: list[tuple[int, int, _Node, int]] = []
            stack = [self._root]
            while stack:
                node = stack.pop()
                for token, child in node.children.items():
                    if child.children:
                        stack.append(child)
                    else:
                        leaves.append((child.count, child.last_used, node, token))
            if not leaves:
                return
            leaves.sort(key=lambda leaf: (leaf[0], leaf[1]))
            for _, _, parent, token in leaves[: self._num_nodes - target]:
                del parent.children[token]
                self._num_nodes -= 1
