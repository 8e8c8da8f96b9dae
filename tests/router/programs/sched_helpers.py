"""Builders for program-scheduler tests: a hand-driven clock and small engines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoal.router.programs.config import ProgramClassConfig, ProgramsConfig
from shoal.router.programs.decisions import Admit, Decision, Pause, Wait
from shoal.router.programs.scheduler import ProgramScheduler
from shoal.router.programs.state import EngineCapacity

BLOCK = 10
"""Tokens per block in these tests: an engine of 100 blocks holds 1000 tokens."""


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def klass(name: str = "agents", model: str = "m", **kw: Any) -> ProgramClassConfig:
    return ProgramClassConfig(name=name, model=model, **kw)


def make(
    classes: Sequence[ProgramClassConfig] | None = None,
    engines: dict[str, int] | None = None,
    call_timeout_s: float = 600.0,
    **cfg: Any,
) -> tuple[ProgramScheduler, Clock]:
    """A scheduler with engines of ``blocks`` each (block size BLOCK); watermarks 0.9 / 0.75."""
    clock = Clock()
    config = ProgramsConfig(**{"high_watermark": 0.9, "low_watermark": 0.75, **cfg})
    sched = ProgramScheduler(config, classes if classes is not None else [klass()], clock, call_timeout_s=call_timeout_s)
    sched.engines_changed(
        {url: EngineCapacity(total_blocks=blocks, free_blocks=blocks, block_size=BLOCK)
         for url, blocks in (engines or {"A": 100}).items()}
    )
    return sched, clock


def hashes(prefix: str, n: int) -> tuple[int, ...]:
    return tuple(hash((prefix, i)) for i in range(n))


def start(
    sched: ProgramScheduler, pid: str, tokens: int, *, tenant: str = "t", cls: str = "agents",
    shared: tuple[int, ...] = (), engine: str | None = None, **kw: Any,
) -> tuple[Admit | Wait, list[Decision]]:
    """Start a call with ``tokens`` prompt tokens (block hashes: ``shared`` then private ones)
    and, when admitted, route it to ``engine`` (or the only allowed engine)."""
    own_blocks = max(0, tokens // BLOCK - len(shared))
    block_hashes = shared + hashes(f"{tenant}/{pid}", own_blocks)
    resolved = sched.resolve_class(cls, "m")
    decision, others = sched.call_started(
        pid, tenant, resolved, prompt_tokens=tokens, block_hashes=block_hashes, block_size=BLOCK, **kw
    )
    if isinstance(decision, Admit):
        target = engine or (sorted(decision.engines)[0] if decision.engines else None)
        if target is not None:
            others += sched.call_routed(decision.call_id, target)
    return decision, others


def finish(
    sched: ProgramScheduler, call_id: str, prompt: int, completion: int = 0, tools: Sequence[str] = ("bash",)
) -> list[Decision]:
    """The call ends; its response asks for ``tools`` (default: one tool, the program acts next;
    ``()``: a final answer)."""
    return sched.call_finished(call_id, prompt_tokens=prompt, completion_tokens=completion, tool_calls=tools)


def pauses(decisions: Sequence[Decision]) -> list[str]:
    return [d.program_id for d in decisions if isinstance(d, Pause)]


def admits(decisions: Sequence[Decision]) -> list[Admit]:
    return [d for d in decisions if isinstance(d, Admit)]
