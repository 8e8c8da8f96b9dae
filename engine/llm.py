"""Offline API: ``LLM(model).generate(prompts_or_messages, params)``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from shoal.engine.chat_format import chat_prompt_ids
from shoal.engine.config import EngineConfig
from shoal.engine.llm_engine import LLMEngine
from shoal.engine.outputs import CompletionOutput, RequestOutput
from shoal.engine.sampling_params import SamplingParams

Message = Mapping[str, Any]
Prompt = str | Sequence[Message]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class GenerationResult:
    """The finished answer to one prompt."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    outputs: tuple[CompletionOutput, ...]
    usage: Usage

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> tuple[int, ...]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason


class LLM:
    """Batch generation on one engine.

    ``LLM("bundled:smollm2-135m-instruct").generate("Hello", SamplingParams(max_tokens=8))``;
    keyword arguments are :class:`EngineConfig` fields.
    """

    def __init__(self, model: str, **engine_args: Any) -> None:
        known = {f.name for f in fields(EngineConfig)}
        unknown = set(engine_args) - known
        if unknown:
            raise TypeError(f"unknown engine argument(s): {', '.join(sorted(unknown))}")
        self.engine = LLMEngine(EngineConfig(model=model, **engine_args))
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt] | None = None,
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        prompt_token_ids: Sequence[Sequence[int]] | None = None,
        progress: bool | Callable[[int, int], None] = False,
    ) -> list[GenerationResult]:
        """Generate for each prompt: a string (completion) or a list of chat messages.

        All prompts are queued at once and batched by the scheduler; results come back
        in input order.
        """
        token_lists = self._tokenize_all(prompts, prompt_token_ids)
        if isinstance(params, SamplingParams) or params is None:
            params_list = [params or SamplingParams()] * len(token_lists)
        else:
            params_list = list(params)
            if len(params_list) != len(token_lists):
                raise ValueError(f"got {len(params_list)} SamplingParams for {len(token_lists)} prompts")
        request_ids = []
        try:
            for ids, p in zip(token_lists, params_list, strict=True):
                request_id = f"offline-{next(self._ids)}"
                self.engine.add_request(request_id, params=p, prompt_token_ids=ids)
                request_ids.append(request_id)
        except Exception:
            for request_id in request_ids:
                self.engine.abort_request(request_id)
            raise
        finals: dict[str, RequestOutput] = {}
        callback = _progress_callback(progress, len(request_ids))
        try:
            while len(finals) < len(request_ids):
                for out in self.engine.step():
                    if out.finished:
                        finals[out.request_id] = out
                        if callback:
                            callback(len(finals), len(request_ids))
                if not self.engine.has_unfinished_requests() and len(finals) < len(request_ids):
                    raise RuntimeError("engine stopped with requests unfinished")
        finally:
            for request_id in request_ids:
                if request_id not in finals:
                    self.engine.abort_request(request_id)
            if callback:
                callback(-1, len(request_ids))
        return [_result(finals[r]) for r in request_ids]

    def _tokenize_all(
        self, prompts: Prompt | Sequence[Prompt] | None, prompt_token_ids: Sequence[Sequence[int]] | None
    ) -> list[list[int]]:
        if prompt_token_ids is not None:
            if prompts is not None:
                raise ValueError("pass prompts or prompt_token_ids, not both")
            return [list(ids) for ids in prompt_token_ids]
        if prompts is None:
            raise ValueError("no prompts given")
        items: Sequence[Prompt]
        if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], Mapping)):
            items = [prompts]  # type: ignore[list-item]
        else:
            items = prompts  # type: ignore[assignment]
        token_lists = []
        for item in items:
            if isinstance(item, str):
                if not item:
                    raise ValueError("prompt must not be empty")
                token_lists.append(self.tokenizer.encode(item))
            else:
                messages = list(item)
                if not messages:
                    raise ValueError("a conversation must have at least one message")
                token_lists.append(chat_prompt_ids(self.tokenizer, {"messages": messages}))
        return token_lists


def _result(out: RequestOutput) -> GenerationResult:
    return GenerationResult(
        request_id=out.request_id,
        prompt_token_ids=out.prompt_token_ids,
        outputs=out.outputs,
        usage=Usage(out.num_prompt_tokens, out.num_generated_tokens, out.num_cached_tokens),
    )


def _progress_callback(progress: bool | Callable[[int, int], None], total: int) -> Callable[[int, int], None] | None:
    if callable(progress):
        return progress
    if not progress:
        return None
    from rich.progress import Progress

    bar = Progress(transient=False)
    task = bar.add_task("generating", total=total)
    bar.start()

    def update(done: int, _total: int) -> None:
        if done < 0:
            bar.stop()
        else:
            bar.update(task, completed=done)

    return update
