"""A small fake of ``LLMEngine`` (same interface, no torch) for fast server tests.

Tokens are characters (id = code point). Each sample "generates" a scripted
answer one character per step, then EOS. The answer depends on the prompt, the
sample index and the seed, so seeds and n are observable.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.engine.errors import DuplicateRequestError, PromptTooLongError
from shoal.engine.outputs import CompletionOutput, EngineStats, RequestOutput
from shoal.engine.sampling_params import SamplingParams

EOS = 3
VOCAB = 512


class FakeTokenizer:
    eos_token_ids = (EOS,)
    vocab_size = VOCAB

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) if ord(c) < VOCAB else ord("?") for c in text]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i == EOS))

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], tools: Any = None, add_generation_prompt: bool = True
    ) -> str:
        if any(m["role"] == "assistant" and m is messages[0] for m in messages):
            raise ValueError("chat template error: conversation must not start with assistant")
        text = f"[tools]{json.dumps(tools)}\n" if tools else ""
        for m in messages:
            text += f"<{m['role']}>{m.get('content') or ''}"
            for call in m.get("tool_calls", []):
                text += f"<call {call['function']['name']} {json.dumps(call['function']['arguments'])}>"
            text += "\n"
        return text + ("<assistant>" if add_generation_prompt else "")

    def encode_chat(self, messages: Any, tools: Any = None, add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.apply_chat_template(messages, tools, add_generation_prompt))

    def to_payload(self) -> dict[str, Any]:
        return {"version": 1, "kind": "fake-chars"}


def default_script(prompt: str, index: int, seed: int | None) -> str:
    """The answer a sample will write: depends on prompt length, index and seed."""
    if "CALL_TOOL" in prompt:
        return '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    start = (len(prompt) + index * 7 + (seed or 0) * 13) % 26
    words = [chr(ord("a") + (start + k) % 26) * (1 + k % 3) for k in range(12)]
    return " ".join(words) + "."


@dataclass
class _Sample:
    target: str
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None
    stop_reason: str | int | None = None


@dataclass
class _Request:
    request_id: str
    prompt: tuple[int, ...]
    params: SamplingParams
    samples: list[_Sample]
    blocks: int
    cached: int
    metrics: dict[str, float]
    program_id: str | None
    retention_s: float | None
    tenant: str
    cache_key: tuple[Any, ...]
    """(cache salt, full-block prompt prefix): what the prefix cache would match on."""


class FakeEngine:
    """Generates one character per sample per step; ``step_delay_s`` emulates compute."""

    def __init__(
        self,
        *,
        max_model_len: int = 512,
        block_size: int = 4,
        num_blocks: int = 256,
        max_num_seqs: int = 8,
        step_delay_s: float = 0.0,
        script: Callable[[str, int, int | None], str] = default_script,
    ) -> None:
        self.tokenizer = FakeTokenizer()
        self.model_name = "fake-model"
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.max_num_seqs = max_num_seqs
        self.step_delay_s = step_delay_s
        self.script = script
        self.waiting: list[_Request] = []
        self.running: list[_Request] = []
        self.pinned: dict[tuple[str, str], int] = {}
        """(tenant, program_id) -> pinned blocks."""
        self.seen_prefixes: set[tuple[Any, ...]] = set()
        self.counters = {"queries": 0, "hits": 0, "prompt": 0, "gen": 0}
        self.added: list[tuple[str, SamplingParams, dict[str, Any]]] = []
        self.aborted: list[str] = []
        self.fail_next_step: Exception | None = None
        self.fail_every_step: Exception | None = None

    # -------------------------------------------------------------- interface

    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        params: SamplingParams,
        *,
        prompt_token_ids: list[int] | None = None,
        priority: int = 0,
        program_id: str | None = None,
        retention_s: float | None = None,
        tenant: str = "",
        cache_salt: str = "",
    ) -> None:
        if any(r.request_id == request_id for r in self.waiting + self.running):
            raise DuplicateRequestError(request_id)
        ids = list(prompt_token_ids if prompt_token_ids is not None else self.tokenizer.encode(prompt or ""))
        if not ids:
            raise ValueError("prompt must contain at least one token")
        bad = [t for t in ids if not 0 <= t < VOCAB]
        if bad:
            raise ValueError(f"prompt token ids must be integers in [0, {VOCAB}), got {bad[0]}")
        if len(ids) >= self.max_model_len:
            raise PromptTooLongError(len(ids), self.max_model_len)
        text = self.tokenizer.decode(ids)
        samples = [_Sample(self.script(text, i, params.seed)) for i in range(params.n)]
        bad_stops = [t for t in params.stop_token_ids if not 0 <= t < VOCAB]
        if bad_stops:
            raise ValueError(f"stop_token_ids must be token ids in [0, {VOCAB}), got {bad_stops[0]}")
        prefix = (cache_salt, *ids[: len(ids) // self.block_size * self.block_size])
        cached = len(prefix) - 1 if prefix in self.seen_prefixes else 0
        self.counters["queries"] += len(ids)
        self.counters["hits"] += cached
        self.counters["prompt"] += len(ids)
        req = _Request(request_id, tuple(ids), params, samples, math.ceil(len(ids) / self.block_size), cached,
                       {"arrival": time.monotonic()}, program_id, retention_s, tenant, prefix)  # fmt: skip
        self.added.append((request_id, params, {"priority": priority, "program_id": program_id,
                                                "retention_s": retention_s, "prompt_token_ids": ids,
                                                "tenant": tenant, "cache_salt": cache_salt}))  # fmt: skip
        self.waiting.append(req)

    def abort_request(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.waiting = [r for r in self.waiting if r.request_id != request_id]
        self.running = [r for r in self.running if r.request_id != request_id]

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def release_program(self, program_id: str, tenant: str = "") -> int:
        return self.pinned.pop((tenant, program_id), 0)

    def step(self) -> list[RequestOutput]:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        if self.fail_next_step is not None:
            exc, self.fail_next_step = self.fail_next_step, None
            raise exc
        if self.fail_every_step is not None:
            raise self.fail_every_step
        now = time.monotonic()
        while self.waiting and len(self.running) < self.max_num_seqs:
            req = self.waiting.pop(0)
            req.metrics["first_scheduled"] = now
            self.running.append(req)
        outputs = []
        for req in list(self.running):
            for sample in req.samples:
                if sample.finish is None:
                    self._advance(req, sample)
            finished = all(s.finish is not None for s in req.samples)
            if finished:
                self.running.remove(req)
                self.seen_prefixes.add(req.cache_key)
                if req.program_id and req.retention_s:
                    key = (req.tenant, req.program_id)
                    self.pinned[key] = self.pinned.get(key, 0) + req.blocks
            outputs.append(self._snapshot(req, finished))
        return outputs

    def stats(self) -> EngineStats:
        used = sum(r.blocks + len(r.samples) for r in self.running)
        pinned = sum(self.pinned.values())
        return EngineStats(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            num_blocks=self.num_blocks,
            num_free_blocks=self.num_blocks - used - pinned,
            kv_usage=(used + pinned) / self.num_blocks,
            block_size=self.block_size,
            prefix_cache_queries=self.counters["queries"],
            prefix_cache_hits=self.counters["hits"],
            num_preemptions=0,
            num_pinned_blocks=pinned,
            num_programs=len(self.pinned),
            prompt_tokens=self.counters["prompt"],
            generation_tokens=self.counters["gen"],
        )

    def cached_block_hashes(self) -> list[int]:
        return sorted(hash(p) & 0xFFFF_FFFF for p in self.seen_prefixes)

    # -------------------------------------------------------------- internals

    def _advance(self, req: _Request, sample: _Sample) -> None:
        params = req.params
        self.counters["gen"] += 1
        pos = len(sample.tokens)
        token = ord(sample.target[pos]) if pos < len(sample.target) else EOS
        sample.tokens.append(token)
        if token == EOS and not params.ignore_eos:
            sample.finish = "stop"
            return
        if token in params.stop_token_ids:
            sample.finish, sample.stop_reason = "stop", token
            return
        sample.text += self.tokenizer.decode([token])
        for stop in params.stop:
            at = sample.text.find(stop)
            if at >= 0:
                sample.text = sample.text[:at]
                sample.finish, sample.stop_reason = "stop", stop
                return
        if params.max_tokens is not None and len(sample.tokens) >= params.max_tokens:
            sample.finish = "length"

    def _snapshot(self, req: _Request, finished: bool) -> RequestOutput:
        k = req.params.logprobs
        outs = []
        for i, s in enumerate(req.samples):
            lps = None
            if k is not None:
                lps = tuple({**{ord("a") + j: -1.0 - j for j in range(k)}, t: -0.25} for t in s.tokens)
            text = s.text if s.finish else s.text[: len(s.text) - _partial_stop(s.text, req.params.stop)]
            outs.append(CompletionOutput(i, text, tuple(s.tokens), s.finish, s.stop_reason, lps))
        return RequestOutput(req.request_id, req.prompt, tuple(outs), finished, req.cached, dict(req.metrics))


def _partial_stop(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that could still grow into a stop string."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if stop.startswith(text[-size:]):
                best = max(best, size)
                break
    return best
