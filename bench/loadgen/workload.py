"""Synthetic workloads: length distributions, arrival processes, single requests and multi-turn conversations.

Prompts are token ids (exact lengths, like vLLM's random dataset) and outputs use
``ignore_eos`` with a fixed ``max_tokens``, so every run does the same work.
Multi-turn conversations are chat requests whose history grows turn by turn and
carry a ``program_id``, so later turns hit the KV blocks kept for the program.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LengthDist:
    """``fixed:N``, ``uniform:LO:HI``, ``normal:MEAN:STD`` or ``lognormal:MEDIAN:SIGMA`` (clamped to >= 1)."""

    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> LengthDist:
        parts = spec.split(":")
        kind, nums = parts[0], [float(x) for x in parts[1:]]
        arity = {"fixed": 1, "uniform": 2, "normal": 2, "lognormal": 2}
        if kind not in arity or len(nums) != arity[kind]:
            raise ValueError(f"bad length distribution {spec!r}; use fixed:N, uniform:LO:HI, normal:M:S, lognormal:M:S")
        return cls(kind, *nums)

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = rng.uniform(self.a, self.b)
        elif self.kind == "normal":
            value = rng.gauss(self.a, self.b)
        else:
            value = self.a * math.exp(rng.gauss(0.0, self.b))
        return max(1, round(value))

    def __str__(self) -> str:
        nums = [self.a] if self.kind == "fixed" else [self.a, self.b]
        return ":".join([self.kind, *(f"{n:g}" for n in nums)])


def arrival_gaps(n: int, rate: float, process: str, burstiness: float, rng: random.Random) -> list[float]:
    """Gaps (seconds) before each of ``n`` arrivals at ``rate`` requests/s.

    ``poisson``: exponential gaps. ``gamma``: gamma gaps with shape ``burstiness`` and
    the same mean (shape < 1 is burstier than Poisson, as in BurstGPT). ``rate=inf``:
    everything at once (saturation).
    """
    if math.isinf(rate):
        return [0.0] * n
    if process == "poisson":
        return [rng.expovariate(rate) for _ in range(n)]
    if process == "gamma":
        return [rng.gammavariate(burstiness, 1.0 / (rate * burstiness)) for _ in range(n)]
    raise ValueError(f"unknown arrival process {process!r}")


@dataclass(frozen=True)
class RequestSpec:
    """One request to send: a completions body (token-id prompt) or a chat body."""

    path: str
    body: dict[str, Any]
    prompt_len: int
    output_len: int


def random_token_prompt(length: int, vocab_lo: int, vocab_hi: int, rng: random.Random) -> list[int]:
    return [rng.randrange(vocab_lo, vocab_hi) for _ in range(length)]


def completion_requests(
    n: int, prompt: LengthDist, output: LengthDist, model: str, rng: random.Random, vocab: tuple[int, int]
) -> list[RequestSpec]:
    specs = []
    for _ in range(n):
        p, o = prompt.sample(rng), output.sample(rng)
        body = {"model": model, "prompt": random_token_prompt(p, *vocab, rng), "max_tokens": o, "ignore_eos": True,
                "temperature": 0.0}  # fmt: skip
        specs.append(RequestSpec("/v1/completions", body, p, o))
    return specs


_WORDS = ["river", "stone", "lantern", "orbit", "maple", "quiet", "signal", "copper", "harbor", "meadow", "vector", "amber", "engine", "cloud", "garden", "thunder", "pixel", "canyon", "falcon", "ember"]  # fmt: skip


def random_text(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


@dataclass(frozen=True)
class Conversation:
    """A multi-turn chat: user turns (text), answered one after the other."""

    program_id: str
    user_turns: tuple[str, ...]
    output_lens: tuple[int, ...]


def conversations(
    n: int, turns: int, prompt: LengthDist, output: LengthDist, rng: random.Random
) -> list[Conversation]:
    # ~1 token per word for this vocabulary of common words
    return [
        Conversation(
            program_id=f"bench-conv-{i}-{rng.randrange(1 << 30)}",
            user_turns=tuple(random_text(prompt.sample(rng), rng) for _ in range(turns)),
            output_lens=tuple(output.sample(rng) for _ in range(turns)),
        )
        for i in range(n)
    ]


def chat_turn(model: str, history: list[dict[str, str]], output_len: int, program_id: str) -> RequestSpec:
    body = {"model": model, "messages": history, "max_tokens": output_len, "ignore_eos": True, "temperature": 0.0,
            "program_id": program_id, "program_retention_s": 60.0}  # fmt: skip
    return RequestSpec("/v1/chat/completions", body, 0, output_len)
