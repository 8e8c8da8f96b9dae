"""Per-app state the completions and chat handlers share: admission, prompt checks,
engine submission."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shoal.engine.errors import PromptTooLongError
from shoal.engine.sampling_params import SamplingParams
from shoal.engine.server.async_engine import AsyncEngine, EngineDeadError, RequestStream
from shoal.engine.server.caller import Caller
from shoal.engine.server.errors import (
    bad_request,
    draining,
    model_not_found,
    too_many_requests,
    unavailable,
)
from shoal.engine.server.metrics import ServerMetrics
from shoal.engine.server.protocol import _SamplingRequest
from shoal.engine.server.settings import ServerSettings

T = TypeVar("T")


@dataclass
class ServingContext:
    """Per-app state shared by the route handlers."""

    engine: AsyncEngine
    settings: ServerSettings
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False
    _token_text: dict[int, str] = field(default_factory=dict)
    _tokenizer_pool: ThreadPoolExecutor | None = None
    _max_text_bytes: int | None = None

    @property
    def tokenizer(self) -> Any:
        return self.engine.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return int(self.engine.engine.max_model_len)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.settings.served_model_name:
            raise model_not_found(name)

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy request work (template rendering, tokenization) in the tokenizer threads."""
        if self._tokenizer_pool is None:
            self._tokenizer_pool = ThreadPoolExecutor(self.settings.tokenizer_threads, "shoal-tokenize")
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_pool, fn, *args)

    def close(self) -> None:
        if self._tokenizer_pool is not None:
            self._tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    def max_text_bytes(self) -> int:
        """Bytes of text that surely tokenize to more than ``max_model_len`` tokens.

        No token covers more than the tokenizer's longest token, so text longer than that
        times the context cannot fit; twice that margin covers normalizers that shrink text.
        """
        if self._max_text_bytes is None:
            per_token = getattr(self.tokenizer, "max_token_bytes", None) or 64
            self._max_text_bytes = 2 * self.max_model_len * int(per_token)
        return self._max_text_bytes

    def check_text_size(self, num_bytes: int, param: str) -> None:
        """400 before tokenizing a text that cannot fit the context (no tokenizer work for it)."""
        limit = self.max_text_bytes()
        if num_bytes > limit:
            raise bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your "
                f"{param} has {num_bytes} bytes of text, more than any {self.max_model_len}-token prompt "
                f"({limit} bytes at most).",
                param=param,
                code="context_length_exceeded",
            )

    def admit(self, count: int) -> None:
        """Refuse new work when draining, dead, or when the waiting queue is full.

        ``count`` is what the request adds to the queue: prompts x n samples.
        """
        if self.draining:
            self.metrics.reject("draining")
            raise draining(self.settings.retry_after_s)
        if self.engine.dead is not None or not self.engine.is_running:
            self.metrics.reject("engine_dead")
            raise unavailable("The engine is not running.", "engine_unavailable")
        limit = self.settings.max_waiting
        if count > limit:
            self.metrics.reject("too_large")
            raise bad_request(
                f"This request asks for {count} sequences (prompts x n); the server queues at most {limit}.",
                param="n",
            )
        if self.engine.num_queued + count > limit:
            self.metrics.reject("queue_full")
            raise too_many_requests(self.settings.retry_after_s)

    def output_budget(self, prompt_len: int, requested: int | None, prompt_param: str) -> int:
        """The max_tokens to use; 400 (naming both counts) when prompt + output cannot fit."""
        limit = self.max_model_len
        if prompt_len >= limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, your prompt has "
                f"{prompt_len} tokens (the prompt must leave room for at least one output token).",
                param=prompt_param,
                code="context_length_exceeded",
            )
        if requested is None:
            return limit - prompt_len
        if prompt_len + requested > limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the "
                "completion). Please reduce the prompt or max_tokens.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested

    def sampling_params(self, req: _SamplingRequest, max_tokens: int, logprobs: int | None) -> SamplingParams:
        try:
            return SamplingParams(
                n=req.n,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=req.top_k or 0,
                min_p=req.min_p or 0.0,
                repetition_penalty=req.repetition_penalty or 1.0,
                presence_penalty=req.presence_penalty or 0.0,
                frequency_penalty=req.frequency_penalty or 0.0,
                seed=req.seed,
                max_tokens=max_tokens,
                min_tokens=req.min_tokens,
                stop=tuple(req.stop_list()),
                stop_token_ids=tuple(req.stop_token_ids or ()),
                ignore_eos=req.ignore_eos,
                logprobs=logprobs,
                skip_special_tokens=req.skip_special_tokens,
            )
        except ValueError as exc:
            raise bad_request(str(exc), param=_param_named(str(exc))) from exc

    async def submit(
        self,
        request_id: str,
        req: _SamplingRequest,
        prompts: Sequence[list[int]],
        params: Sequence[SamplingParams],
        arrival: float,
        caller: Caller,
    ) -> list[RequestStream]:
        """Add one engine request per prompt; on any failure, abort the ones already added."""
        streams: list[RequestStream] = []
        try:
            for i, (ids, p) in enumerate(zip(prompts, params, strict=True)):
                sub_id = request_id if len(prompts) == 1 else f"{request_id}-{i}"
                streams.append(
                    await self.engine.add_request(
                        sub_id,
                        p,
                        prompt_token_ids=ids,
                        arrival=arrival,
                        priority=caller.priority,
                        program_id=req.program_id,
                        retention_s=req.program_retention_s,
                        tenant=caller.tenant,
                        cache_salt=caller.cache_salt,
                    )
                )
        except BaseException as exc:
            for stream in streams:
                self.engine.abort(stream.request_id)
            if isinstance(exc, PromptTooLongError):
                raise bad_request(
                    f"This model's maximum context length is {exc.max_model_len} tokens. However, your "
                    f"prompt has {exc.num_tokens} tokens.",
                    code="context_length_exceeded",
                ) from exc
            if isinstance(exc, ValueError):
                raise bad_request(str(exc), param=_param_named(str(exc))) from exc
            if isinstance(exc, EngineDeadError):
                raise unavailable(str(exc), "engine_unavailable") from exc
            raise
        return streams

    def abort_all(self, streams: Sequence[RequestStream]) -> None:
        for stream in streams:
            if not stream.finished:
                self.engine.abort(stream.request_id)

    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_text[token_id] = text
        return text


_PARAMS = ("stop_token_ids", "min_tokens", "max_tokens", "seed", "top_k", "top_p", "min_p", "logprobs")


def _param_named(message: str) -> str | None:
    """The request parameter an engine ValueError is about (its messages start with the name)."""
    return next((p for p in _PARAMS if message.startswith(p)), None)
