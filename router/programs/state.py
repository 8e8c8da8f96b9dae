"""What the scheduler knows about one agent program and the engines it runs on.

Mutable records owned by ``ProgramScheduler`` (only it changes them); everything that
leaves the scheduler is a frozen decision or snapshot.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from shoal.router.programs.config import ProgramClassConfig


class Activity(enum.StrEnum):
    """What a program is doing: waiting for the LLM or running its tools."""

    REASONING = "reasoning"
    """At least one LLM call of the program is in flight."""
    ACTING = "acting"
    """Between calls (a tool runs, or the client thinks)."""


class Lifecycle(enum.StrEnum):
    """Where a program stands with the scheduler."""

    QUEUED = "queued"
    """Never admitted yet: its first call waits for room or a class slot."""
    ACTIVE = "active"
    """Admitted: its calls go straight to its engine, its KV counts there."""
    PAUSED = "paused"
    """Taken off its engine under KV pressure (pin dropped); its next call waits to resume."""
    TERMINATED = "terminated"
    """Released, or its lease expired."""


@dataclass(frozen=True)
class EngineCapacity:
    """One engine's KV cache as it reports it (``shoal:`` metrics), in blocks."""

    total_blocks: int
    free_blocks: int = 0
    cached_blocks: int = 0
    """Free blocks that still hold a reusable prefix."""
    pinned_blocks: int = 0
    block_size: int = 16
    """Tokens per block."""
    up: bool = True
    """False: the engine is unreachable or unhealthy; nothing is placed there."""

    @property
    def total_tokens(self) -> int:
        return self.total_blocks * self.block_size


@dataclass
class Call:
    """One LLM call of a program, from arrival to its end."""

    call_id: str
    seq: int
    """Arrival order across the scheduler: the latest call's usage wins the context size."""
    arrived_at: float
    prompt_tokens: int
    block_hashes: tuple[int, ...]
    candidates: frozenset[str] | None
    """Engines the pool could use for it (None: any the scheduler knows)."""
    started_at: float | None = None
    """When it was admitted (None while it waits)."""
    engine: str | None = None
    retention_s: float = 0.0
    hash_set: frozenset[int] = field(init=False)
    """``block_hashes`` as a set (placement intersects it with every engine's blocks)."""
    extra_seen: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """engine -> (ledger version, tokens, KV tokens the call would add there): placement's memo."""

    def __post_init__(self) -> None:
        self.hash_set = frozenset(self.block_hashes)


@dataclass
class Program:
    """One agent program: a tenant's chain of LLM calls separated by tool runs."""

    program_id: str
    tenant: str
    cls: ProgramClassConfig
    """The class config the program runs with: re-read from the loaded classes at each of
    its calls, kept as it was when its class is removed."""
    created_at: float
    last_activity: float
    lifecycle: Lifecycle = Lifecycle.QUEUED
    engine: str | None = None
    """Origin engine: where its KV blocks are (or were, when paused)."""
    calls: dict[str, Call] = field(default_factory=dict)
    """Admitted calls in flight."""
    waiting: dict[str, Call] = field(default_factory=dict)
    """Calls held back (queued or paused program)."""
    turns: int = 0
    context_tokens: int = 0
    """prompt + completion tokens of its latest finished call (engine usage)."""
    context_seq: int = -1
    block_hashes: tuple[int, ...] = ()
    """Block hashes of its latest prompt: shared prefixes are counted once per engine."""
    hash_block_size: int = 16
    marked: bool = False
    """Over the high watermark while reasoning: paused as soon as its calls end."""
    pinned_until: float = 0.0
    """Its context counts on its engine until then while it acts: the retention after its
    last call (the engine pins its blocks), or the room held for it by a proactive resume."""
    paused_at: float | None = None
    queued_at: float | None = None
    last_call_end: float | None = None
    last_tools: tuple[str, ...] = ()
    """Tools the latest response asked for: the next gap is their duration."""
    tools_reported: set[str] = field(default_factory=set)
    """Tools whose duration the sandbox already reported since the last call ended."""
    tools_running: dict[int, float] = field(default_factory=dict)
    """Sandbox tool runs in progress: token -> the run's deadline (start + its timeout).
    A running tool is activity, so a long tool never lets the lease end under it."""
    prewarmed: bool = False
    cached_tokens_total: int = 0
    prompt_tokens_total: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.program_id)

    @property
    def activity(self) -> Activity:
        return Activity.REASONING if self.calls else Activity.ACTING

    def counts(self, now: float) -> bool:
        """Whether its context occupies its engine's KV now: reasoning, or acting while pinned."""
        if self.lifecycle is not Lifecycle.ACTIVE or self.engine is None:
            return False
        return bool(self.calls) or now < self.pinned_until
