"""One generated sequence: its tokens, its KV blocks and where it stands (torch-free)."""

from __future__ import annotations

import itertools
from enum import Enum
from typing import TYPE_CHECKING

from shoal.engine.sampling_params import SamplingParams
from shoal.engine.spec.token_tree import DraftTree

if TYPE_CHECKING:
    from llguidance import LLMatcher

_seq_ids = itertools.count()


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """Mutable state of one sample of one request, owned by the scheduler.

    ``num_computed_tokens`` counts tokens whose KV is in the cache; the tokens from there
    to the end still need a forward pass (many for a prompt chunk, one for a decode).
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        index: int = 0,
        priority: int = 0,
        arrival: float = 0.0,
        program_id: str | None = None,
        retention_s: float | None = None,
        cache_salt: str = "",
        tenant: str = "",
    ) -> None:
        self.seq_id = next(_seq_ids)
        self.request_id = request_id
        self.index = index
        self.params = params
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        """Prompt tokens served from the prefix cache at admission (first admission only)."""
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        """Hashes of the leading full blocks, in order (registered in the prefix cache)."""
        self.status = SequenceStatus.WAITING
        self.priority = priority
        self.arrival = arrival
        self.program_id = program_id
        self.retention_s = retention_s
        self.cache_salt = cache_salt
        """Mixed into the prefix-cache block hashes: requests share cached blocks only with equal salts."""
        self.tenant = tenant
        """Owner of this request's program pin (pins are keyed by (tenant, program_id))."""
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.num_preemptions = 0
        self.pending_fork = params.n > 1 and index == 0
        """True for the leader of an n>1 request until its prompt is done and it forks."""
        self.waiting_steps = 0
        self.draft: DraftTree | None = None
        """Tokens drafted to verify in this step's forward pass (speculative decoding); None = plain decode."""
        self.matcher: LLMatcher | None = None
        """Grammar state of a structured output (``params.structured``), advanced on each accepted
        token; preemption keeps the output tokens, so the state stays valid through recompute."""

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, req={self.request_id!r}, idx={self.index}, len={len(self)}, "
            f"computed={self.num_computed_tokens}, blocks={self.block_table}, {self.status.value})"
        )

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def num_blocks_needed(self, block_size: int, num_tokens: int | None = None) -> int:
        tokens = len(self.token_ids) if num_tokens is None else num_tokens
        return (tokens + block_size - 1) // block_size
