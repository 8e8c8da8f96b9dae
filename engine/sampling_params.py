"""Per-request sampling settings (torch-free, validated at construction)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

StructuredKind = Literal["json_schema", "json_object", "regex", "lark"]


@dataclass(frozen=True)
class StructuredOutput:
    """A grammar the generated text must match; ``shoal.engine.structured`` compiles it.

    Plain data (the router imports this module): the engine turns it into a token mask
    per step. ``value`` is the JSON schema as JSON text (``json_schema``), the pattern
    (``regex``), an llguidance Lark grammar (``lark``) or empty (``json_object``).
    """

    kind: StructuredKind
    value: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("json_schema", "json_object", "regex", "lark"):
            raise ValueError(f"structured output kind must be json_schema, json_object, regex or lark, got {self.kind!r}")
        if self.kind != "json_object" and not self.value:
            raise ValueError(f"a {self.kind} structured output needs a non-empty value")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next tokens of one request.

    Follows vLLM's semantics: ``temperature=0`` is greedy; penalties apply to the
    logits before temperature; ``seed`` makes a request reproducible whatever the
    batch around it.
    """

    n: int = 1
    """Number of parallel samples; they share the prompt's KV blocks."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 or -1 disables top-k; the engine treats a value at or above the vocabulary size as 0."""
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    """Any 64-bit integer (signed or unsigned range); the generator reduces it modulo 2**64."""
    max_tokens: int | None = 16
    """None means up to the model's context length."""
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    """Stop strings; never included in the returned text."""
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    """Return this many top logprobs per generated token (plus the sampled one)."""
    skip_special_tokens: bool = True
    structured: StructuredOutput | None = None
    """Constrain the output to a grammar (JSON schema, JSON object, regex, tool-call format)."""
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.top_k == -1:
            object.__setattr__(self, "top_k", 0)
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be -1, 0 (disabled) or positive, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not -2 <= self.presence_penalty <= 2:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        if not -2 <= self.frequency_penalty <= 2:
            raise ValueError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise ValueError(f"seed must be a 64-bit integer in [-2**63, 2**64), got {self.seed}")
        if self.min_tokens < 0 or (self.max_tokens is not None and self.min_tokens > self.max_tokens):
            raise ValueError(f"min_tokens must be in [0, max_tokens ({self.max_tokens})], got {self.min_tokens}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError(f"logprobs must be in [0, 20], got {self.logprobs}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.structured is not None and (self.min_tokens or self.ignore_eos):
            # the grammar decides where the output ends; forcing it on would leave no legal token
            raise ValueError("min_tokens and ignore_eos cannot be combined with a structured output")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1
