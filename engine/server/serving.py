"""What the completions and chat handlers share: admission, prompt checks, engine
submission, disconnect handling, usage and SSE framing."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from shoal.engine.errors import PromptTooLongError
from shoal.engine.sampling_params import SamplingParams
from shoal.engine.server.async_engine import AsyncEngine, EngineDeadError, RequestStream, StreamUpdate
from shoal.engine.server.errors import APIError, bad_request, model_not_found, too_many_requests, unavailable
from shoal.engine.server.metrics import ServerMetrics
from shoal.engine.server.protocol import _SamplingRequest
from shoal.engine.server.responses import PromptTokensDetails, Usage

T = TypeVar("T")
SSE_DONE = b"data: [DONE]\n\n"
_MIN_LOGPROB = -9999.0  # JSON has no -inf


@dataclass(frozen=True)
class ServerSettings:
    """HTTP-side settings of one replica (engine settings live in ``EngineConfig``)."""

    served_model_name: str
    model_path: str = ""
    max_waiting: int = 256
    """Most accepted requests that have not produced a token yet; past it, 429."""
    max_body_bytes: int = 8 * 1024 * 1024
    retry_after_s: int = 1
    api_key: str | None = None
    tool_call_parser: str = "hermes"
    """``hermes`` (Qwen/Hermes ``<tool_call>`` JSON) or ``none``."""
    block_size: int = 16


@dataclass
class ServingContext:
    """Per-app state shared by the route handlers."""

    engine: AsyncEngine
    settings: ServerSettings
    metrics: ServerMetrics
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False
    _token_text: dict[int, str] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Any:
        return self.engine.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return int(self.engine.engine.max_model_len)

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.settings.served_model_name:
            raise model_not_found(name)

    def admit(self, count: int) -> None:
        """Refuse new work when draining, dead, or when the waiting queue is full."""
        if self.draining:
            self.metrics.reject("draining")
            raise unavailable("The server is shutting down.", "server_draining")
        if self.engine.dead is not None or not self.engine.is_running:
            self.metrics.reject("engine_dead")
            raise unavailable("The engine is not running.", "engine_unavailable")
        queued = self.engine.num_queued
        if queued and queued + count > self.settings.max_waiting:
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
                min_tokens=min(req.min_tokens, max_tokens),
                stop=tuple(req.stop_list()),
                stop_token_ids=tuple(req.stop_token_ids or ()),
                ignore_eos=req.ignore_eos,
                logprobs=logprobs,
                skip_special_tokens=req.skip_special_tokens,
            )
        except ValueError as exc:
            raise bad_request(str(exc)) from exc

    async def submit(
        self,
        request_id: str,
        req: _SamplingRequest,
        prompts: Sequence[list[int]],
        params: Sequence[SamplingParams],
        arrival: float,
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
                        priority=req.priority,
                        program_id=req.program_id,
                        retention_s=req.program_retention_s,
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
                raise bad_request(str(exc)) from exc
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


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def sse_error(exc: BaseException) -> bytes:
    error = exc if isinstance(exc, APIError) else APIError(500, f"{type(exc).__name__}: {exc}")
    return sse(error.body())


async def final_updates(streams: Sequence[RequestStream]) -> list[StreamUpdate]:
    """Wait for every stream to finish; the last update of each."""

    async def last(stream: RequestStream) -> StreamUpdate:
        last_update = None
        async for update in stream:
            last_update = update
        assert last_update is not None
        return last_update

    if len(streams) == 1:
        return [await last(streams[0])]
    return list(await asyncio.gather(*(last(s) for s in streams)))


async def merged_updates(streams: Sequence[RequestStream]) -> AsyncIterator[tuple[int, StreamUpdate]]:
    """(stream position, update) from several streams as they come."""
    if len(streams) == 1:
        async for update in streams[0]:
            yield 0, update
        return
    queue: asyncio.Queue[tuple[int, StreamUpdate | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for update in stream:
                queue.put_nowait((i, update, None))
            queue.put_nowait((i, None, None))
        except BaseException as exc:
            queue.put_nowait((i, None, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, update, exc = await queue.get()
            if exc is not None:
                raise exc
            if update is None:
                remaining -= 1
            else:
                yield i, update
    finally:
        for task in tasks:
            task.cancel()


class EventStreamResponse(StreamingResponse):
    """SSE response that runs ``on_close`` however it ends.

    A client can vanish before the body generator first runs; its ``finally`` would
    then never run, so the abort hangs off the response itself.
    """

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class ClientDisconnected(Exception):
    """The client went away before a non-streamed answer was ready."""


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first (then cancel it and raise)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise ClientDisconnected()
