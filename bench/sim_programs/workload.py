"""Agentic workload: programs of several LLM calls separated by tool calls.

Every program starts from one shared system prompt plus its own task; each call's
prompt is the previous context plus the previous output and tool observation, so the
context grows turn by turn. Program ``i`` of a seed is the same whatever the policy,
the concurrency or how many programs a run consumes (its generator is seeded by
``(seed, i)``), so policies see identical traces.

Sizes are scaled down from real agents (outputs of a few hundred tokens, observations of
a few hundred to thousands) so that the CPU engine's fitted costs give calls of seconds.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum


class ClientMode(StrEnum):
    """What the client does when a program ends."""

    RELEASES = "releases"
    """Calls release after its last turn."""
    NEVER_RELEASES = "never-releases"
    """Stops after its last turn without a release (the scheduler must notice on its own)."""
    CRASHES = "crashes"
    """A share of the programs vanish mid-program (after a random call, no release); the rest release."""


@dataclass(frozen=True)
class ToolDist:
    """Duration distribution of one tool: a lognormal body, optionally a Pareto tail."""

    median_s: float
    sigma: float
    tail_p: float = 0.0
    """Probability that a call lands in the Pareto tail instead of the body."""
    tail_min_s: float = 0.0
    tail_alpha: float = 1.5
    cap_s: float = 600.0

    def sample(self, rng: random.Random) -> float:
        if self.tail_p and rng.random() < self.tail_p:
            return min(self.cap_s, self.tail_min_s * (1.0 - rng.random()) ** (-1.0 / self.tail_alpha))
        return min(self.cap_s, self.median_s * math.exp(self.sigma * rng.gauss(0.0, 1.0)))


@dataclass(frozen=True)
class Regime:
    """Tool-duration regime: the tools a program picks from (name, weight, distribution)."""

    name: str
    tools: tuple[tuple[str, float, ToolDist], ...]
    description: str

    def sample(self, rng: random.Random) -> tuple[str, float]:
        pick = rng.random() * sum(w for _, w, _ in self.tools)
        for name, weight, dist in self.tools:
            pick -= weight
            if pick <= 0:
                return name, dist.sample(rng)
        name, _, dist = self.tools[-1]
        return name, dist.sample(rng)


REGIMES: dict[str, Regime] = {
    "low-variance": Regime(
        "low-variance",
        (("bash", 0.5, ToolDist(2.0, 0.25)), ("edit", 0.3, ToolDist(1.2, 0.25)), ("search", 0.2, ToolDist(2.8, 0.25))),
        "lognormal, medians 1.2-2.8 s, sigma 0.25",
    ),
    "heavy-tail": Regime(
        "heavy-tail",
        (
            ("bash", 0.6, ToolDist(1.5, 0.6, tail_p=0.04, tail_min_s=30.0, tail_alpha=1.3)),
            ("edit", 0.4, ToolDist(1.0, 0.5, tail_p=0.04, tail_min_s=30.0, tail_alpha=1.3)),
        ),
        "lognormal body (medians 1.0-1.5 s, sigma 0.5-0.6) + 4% Pareto tail from 30 s (alpha 1.3), capped at 600 s",
    ),
    "bimodal": Regime(
        "bimodal",
        (("edit", 0.7, ToolDist(0.8, 0.3)), ("run_tests", 0.3, ToolDist(15.0, 0.3))),
        "70% short edits (median 0.8 s) / 30% test runs (median 15 s), lognormal sigma 0.3",
    ),
}


@dataclass(frozen=True)
class Turn:
    """One LLM call of a program and the tool call that follows it (None after the last call)."""

    prompt_tokens: int
    output_tokens: int
    tool: str | None
    tool_s: float
    observation_tokens: int


@dataclass(frozen=True)
class ProgramTrace:
    """A whole program as the client will play it."""

    index: int
    turns: tuple[Turn, ...]
    crashes_after: int | None
    """Number of calls after which the client vanishes (CRASHES mode); None: runs to the end."""
    releases: bool


@dataclass(frozen=True)
class WorkloadSpec:
    """Shape of the agentic workload (token sizes scaled down for the CPU engine)."""

    regime: str = "low-variance"
    client_mode: ClientMode = ClientMode.RELEASES
    seed: int = 0
    system_prompt_tokens: int = 256
    """Shared by every program (one prefix in the cache per engine)."""
    task_tokens: tuple[int, int] = (32, 128)
    """Range of the program's own first user message."""
    turns: tuple[int, int] = (4, 10)
    """Range of LLM calls per program."""
    output_tokens: tuple[int, int] = (16, 64)
    """Range of each call's completion (real agents: 100-500; scaled down ~7x)."""
    observation_median: int = 64
    observation_sigma: float = 0.8
    observation_max: int = 512
    max_context_tokens: int | None = None
    """A program ends (its call is the last, no tool after it) when its next prompt would pass
    this: agents stop or compact at their context limit. None: no limit."""
    crash_fraction: float = 0.3
    """Share of programs that crash in CRASHES mode."""
    tools: Regime | None = None
    """Tools to use instead of the named regime's (e.g. the --real run's single tool)."""

    def __post_init__(self) -> None:
        if self.tools is None and self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}; choose from {', '.join(REGIMES)}")
        for name in ("task_tokens", "turns", "output_tokens"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"{name} must be a range 1 <= lo <= hi, got {(lo, hi)}")

    def program(self, index: int) -> ProgramTrace:
        """The ``index``-th program of this workload (deterministic per seed and index)."""
        rng = random.Random(f"{self.seed}:{self.regime}:{index}")
        regime = self.tools or REGIMES[self.regime]
        n = rng.randint(*self.turns)
        context = self.system_prompt_tokens + rng.randint(*self.task_tokens)
        turns = []
        for k in range(n):
            out = rng.randint(*self.output_tokens)
            last = k == n - 1
            tool, tool_s = (None, 0.0) if last else regime.sample(rng)
            obs = 0 if last else min(self.observation_max, max(8, round(rng.lognormvariate(
                math.log(self.observation_median), self.observation_sigma))))
            if not last and self.max_context_tokens is not None and context + out + obs > self.max_context_tokens:
                turns.append(Turn(context, out, None, 0.0, 0))
                break
            turns.append(Turn(context, out, tool, tool_s, obs))
            context += out + obs
        n = len(turns)
        crash_draw = rng.random()
        crash_turn = rng.randint(1, max(1, n - 1))
        crashes = self.client_mode is ClientMode.CRASHES and crash_draw < self.crash_fraction
        return ProgramTrace(
            index=index,
            turns=tuple(turns),
            crashes_after=crash_turn if crashes else None,
            releases=self.client_mode is not ClientMode.NEVER_RELEASES and not crashes,
        )

    def mean_context_tokens(self, samples: int = 200) -> float:
        """Average prompt length over calls (what a program holds in KV while it runs)."""
        total = count = 0
        for i in range(samples):
            for turn in self.program(i).turns:
                total += turn.prompt_tokens + turn.output_tokens
                count += 1
        return total / count
