"""What the engine returns per step and per request (cumulative, immutable snapshots)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CompletionOutput:
    """One sample of a request so far.

    ``text``, ``token_ids`` and ``logprobs`` are cumulative; ``text`` never holds a stop
    string or a trailing piece that could still become one.
    """

    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    """``stop``, ``length``, ``abort`` or None while generating."""
    stop_reason: int | str | None = None
    """The stop string or stop token id that ended the sample, if any."""
    logprobs: tuple[dict[int, float], ...] | None = None
    """Per generated token: the top logprobs plus the sampled token's."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class RequestOutput:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    outputs: tuple[CompletionOutput, ...]
    finished: bool
    num_cached_tokens: int = 0
    """Prompt tokens served from the prefix cache."""
    metrics: dict[str, float] = field(default_factory=dict, compare=False)
    """Timestamps (monotonic seconds): arrival, first_scheduled, first_token, finished."""

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for metrics; counters are cumulative since start."""

    num_running: int
    num_waiting: int
    num_blocks: int
    num_free_blocks: int
    kv_usage: float
    block_size: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    num_pinned_blocks: int
    num_programs: int
    prompt_tokens: int
    generation_tokens: int
    num_cached_blocks: int = 0
    """Free blocks that still hold a reusable prefix."""
    spec_num_drafts: int = 0
    """Drafts verified (speculative decoding)."""
    spec_num_draft_tokens: int = 0
    spec_num_accepted_tokens: int = 0
    spec_accepted_per_pos: tuple[int, ...] = ()
    """How often the i-th token of a draft path was accepted."""
