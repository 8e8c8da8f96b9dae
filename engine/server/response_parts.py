"""Pieces both handlers put in their answers: ids, usage, logprobs."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence

from shoal.engine.server.async_engine import StreamUpdate
from shoal.engine.server.responses import PromptTokensDetails, Usage

_MIN_LOGPROB = -9999.0  # JSON has no -inf


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def clamp_logprob(value: float) -> float:
    return value if math.isfinite(value) else _MIN_LOGPROB


def top_logprobs(entry: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(entry.items(), key=lambda kv: -kv[1])[:k]


def usage_of(prompt_lens: Sequence[int], finals: Sequence[StreamUpdate]) -> Usage:
    prompt = sum(prompt_lens)
    completion = sum(len(o.token_ids) for f in finals for o in f.outputs)
    cached = sum(f.num_cached_tokens for f in finals)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )
