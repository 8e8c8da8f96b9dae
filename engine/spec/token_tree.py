"""A draft as a token tree: several candidate continuations sharing their common prefixes."""

from __future__ import annotations

from dataclasses import dataclass

ROOT = -1
"""Parent index of the nodes that directly follow the sequence's last token."""


@dataclass(frozen=True)
class DraftTree:
    """Drafted tokens in topological order (a parent always comes before its children).

    Node ``i`` is ``tokens[i]``; it continues node ``parents[i]`` (or the sequence itself when
    ``ROOT``). Verification places node ``i`` right after the sequence's last token in the KV
    cache and at position ``last + depths[i]``.
    """

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    source: str = ""
    """Where the draft came from (e.g. ``own:4``: the request's own text, a 4-token match); the
    speculator learns each source's acceptance separately."""

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError("a draft tree needs one parent per token")
        for i, parent in enumerate(self.parents):
            if not ROOT <= parent < i:
                raise ValueError(f"node {i} has parent {parent}: parents must come first")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def depths(self) -> list[int]:
        """Depth of each node (1 for the root's children)."""
        depths: list[int] = []
        for parent in self.parents:
            depths.append(1 if parent == ROOT else depths[parent] + 1)
        return depths

    @property
    def is_chain(self) -> bool:
        """A single branch: each node continues the one before (its attention is plain causal)."""
        return all(parent == i - 1 for i, parent in enumerate(self.parents))

    def children(self, parent: int) -> list[int]:
        return [i for i, p in enumerate(self.parents) if p == parent]

    def ancestors_or_self(self, node: int) -> list[int]:
        """Node indices from ``node`` up to the root's child, nearest first."""
        chain = []
        while node != ROOT:
            chain.append(node)
            node = self.parents[node]
        return chain

    def truncated(self, size: int) -> DraftTree:
        """The first ``size`` nodes (still a tree: parents come first)."""
        return self if size >= len(self) else DraftTree(self.tokens[:size], self.parents[:size], self.source)

    @staticmethod
    def chain(tokens: list[int]) -> DraftTree:
        """A single-branch draft."""
        return DraftTree(tuple(tokens), tuple(range(-1, len(tokens) - 1)))


class TreeBuilder:
    """Merges candidate continuations into one :class:`DraftTree` of at most ``budget`` nodes."""

    def __init__(self, budget: int, max_depth: int) -> None:
        self.budget = budget
        self.max_depth = max_depth
        self._tokens: list[int] = []
        self._parents: list[int] = []
        self._depths: list[int] = []
        self._index: dict[tuple[int, int], int] = {}

    @property
    def full(self) -> bool:
        return len(self._tokens) >= self.budget

    def child(self, parent: int, token: int) -> int | None:
        """Index of ``token`` under ``parent``, added if new; None when the budget or depth is spent."""
        found = self._index.get((parent, token))
        if found is not None:
            return found
        depth = 1 if parent == ROOT else self._depths[parent] + 1
        if self.full or depth > self.max_depth:
            return None
        self._index[(parent, token)] = len(self._tokens)
        self._tokens.append(token)
        self._parents.append(parent)
        self._depths.append(depth)
        return len(self._tokens) - 1

    def add_path(self, tokens: list[int]) -> None:
        parent = ROOT
        for token in tokens:
            node = self.child(parent, token)
            if node is None:
                return
            parent = node

    def build(self, source: str = "") -> DraftTree | None:
        if not self._tokens:
            return None
        return DraftTree(tuple(self._tokens), tuple(self._parents), source)
