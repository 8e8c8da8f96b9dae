"""Speculative decoding settings (torch-free; part of :class:`~shoal.engine.config.EngineConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

DRAFTER_NAMES = ("trie",)


@dataclass(frozen=True)
class SpeculationConfig:
    """How the engine drafts tokens and verifies them in one forward pass (lossless)."""

    method: str = "trie"
    """Drafter name (``trie``: n-grams of the request's own text plus a trie learned from all traffic)."""
    max_draft_tokens: int = 8
    """Most drafted tokens (tree nodes) verified per sequence per step; the adaptive budget stays under it."""
    max_depth: int = 6
    """Longest drafted continuation (tree depth)."""
    max_batch_size: int = 8
    """No speculation once more sequences than this decode in one step: the step is then
    compute-bound and verifying drafts would cost more than it saves."""
    global_trie_nodes: int = 200_000
    """Memory bound of the trie shared by all requests (nodes); the least used are evicted past it."""
    min_branch_share: float = 0.1
    """A drafted branch must hold at least this share of its parent's observations (prunes weak guesses)."""

    def __post_init__(self) -> None:
        if self.method not in DRAFTER_NAMES:
            raise ValueError(
                f"speculation method must be one of {', '.join(DRAFTER_NAMES)}, got {self.method!r}"
            )
        if not 1 <= self.max_draft_tokens <= 63:  # the Triton kernel's tree mask is one int64 per token
            raise ValueError(f"max_draft_tokens must be in [1, 63], got {self.max_draft_tokens}")
        if not 1 <= self.max_depth <= self.max_draft_tokens:
            raise ValueError(f"max_depth must be in [1, max_draft_tokens], got {self.max_depth}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.global_trie_nodes < 0:
            raise ValueError(f"global_trie_nodes must be >= 0, got {self.global_trie_nodes}")
        if not 0.0 <= self.min_branch_share < 1.0:
            raise ValueError(f"min_branch_share must be in [0, 1), got {self.min_branch_share}")
