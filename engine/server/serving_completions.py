"""POST /v1/completions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shoal.engine.outputs import CompletionOutput
from shoal.engine.server.async_engine import RequestStream
from shoal.engine.server.caller import caller_of
from shoal.engine.server.disconnect import ClientDisconnected, until_disconnect
from shoal.engine.server.errors import bad_request
from shoal.engine.server.protocol import MAX_N, CompletionRequest
from shoal.engine.server.response_parts import clamp_logprob, new_id, top_logprobs, usage_of
from shoal.engine.server.responses import CompletionChoice, CompletionLogprobs, CompletionResponse
from shoal.engine.server.serving import ServingContext
from shoal.engine.server.sse import SSE_DONE, EventStreamResponse, sse, sse_error, sse_usage
from shoal.engine.server.stream_merge import final_updates, merged_updates


def _logprobs(
    ctx: ServingContext, out: CompletionOutput, start: int, k: int, offset: int
) -> CompletionLogprobs:
    """Logprobs of generated tokens ``start:``; ``offset`` is the text offset of the first."""
    result = CompletionLogprobs()
    entries = out.logprobs or ()
    for pos in range(start, min(len(out.token_ids), len(entries))):
        token_id = out.token_ids[pos]
        entry = entries[pos]
        text = ctx.token_text(token_id)
        result.tokens.append(text)
        result.token_logprobs.append(clamp_logprob(entry.get(token_id, float("-inf"))))
        result.top_logprobs.append({ctx.token_text(t): clamp_logprob(v) for t, v in top_logprobs(entry, k)})
        result.text_offset.append(offset)
        offset += len(text)
    return result


def _encode_prompts(tokenizer: Any, prompts: Sequence[str | list[int]]) -> list[list[int]]:
    return [list(tokenizer.encode(p)) if isinstance(p, str) else p for p in prompts]


async def create_completion(ctx: ServingContext, req: CompletionRequest, raw: Request) -> Response:
    arrival = time.monotonic()
    ctx.check_model(req.model)
    caller = caller_of(raw, req.priority)
    prompts = req.prompts()
    if len(prompts) * req.n > MAX_N:
        raise bad_request(f"prompts x n must be at most {MAX_N}", param="n")
    ctx.admit(len(prompts) * req.n)  # before any tokenizer work: a full queue costs nothing
    for p in prompts:
        if isinstance(p, str):
            ctx.check_text_size(len(p.encode("utf-8", "surrogatepass")), "prompt")
    token_lists = await ctx.off_loop(_encode_prompts, ctx.tokenizer, prompts)
    if any(not ids for ids in token_lists):
        raise bad_request("prompt must not be empty", param="prompt")
    params = [
        ctx.sampling_params(req, ctx.output_budget(len(ids), req.max_tokens, "prompt"), req.logprobs)
        for ids in token_lists
    ]
    ctx.admit(len(token_lists) * req.n)
    request_id = new_id("cmpl")
    streams = await ctx.submit(request_id, req, token_lists, params, arrival, caller)
    echoes = [(p if isinstance(p, str) else ctx.tokenizer.decode(p)) if req.echo else "" for p in prompts]
    prompt_lens = [len(ids) for ids in token_lists]
    if req.stream:
        body = _stream(ctx, req, request_id, streams, echoes, prompt_lens)
        return EventStreamResponse(body, on_close=lambda: ctx.abort_all(streams))
    try:
        finals = await until_disconnect(raw, final_updates(streams))
    except ClientDisconnected:
        return Response(status_code=499)
    finally:
        ctx.abort_all(streams)
    choices = []
    for p_idx, final in enumerate(finals):
        for out in final.outputs:
            text = echoes[p_idx] + out.text
            logprobs = _logprobs(ctx, out, 0, req.logprobs, 0) if req.logprobs is not None else None
            choices.append(
                CompletionChoice(
                    index=p_idx * req.n + out.index,
                    text=text,
                    logprobs=logprobs,
                    finish_reason=out.finish_reason,
                    stop_reason=out.stop_reason,
                )
            )
    response = CompletionResponse(
        id=request_id,
        created=int(time.time()),
        model=ctx.settings.served_model_name,
        choices=choices,
        usage=usage_of(prompt_lens, finals),
    )
    return Response(response.model_dump_json(), media_type="application/json")


async def _stream(
    ctx: ServingContext,
    req: CompletionRequest,
    request_id: str,
    streams: Sequence[RequestStream],
    echoes: Sequence[str],
    prompt_lens: Sequence[int],
) -> AsyncIterator[bytes]:
    created = int(time.time())
    model = ctx.settings.served_model_name
    sent_text: dict[int, int] = {}
    sent_tokens: dict[int, int] = {}
    text_offset: dict[int, int] = {}
    done: set[int] = set()
    finals = [None] * len(streams)
    try:
        async for p_idx, update in merged_updates(streams):
            finals[p_idx] = update  # type: ignore[call-overload]
            for out in update.outputs:
                index = p_idx * req.n + out.index
                if index in done:
                    continue
                first = index not in sent_text
                text = out.text[sent_text.get(index, 0) :]
                n_tok = sent_tokens.get(index, 0)
                if not text and len(out.token_ids) == n_tok and out.finish_reason is None and not first:
                    continue
                choice: dict[str, object] = {"index": index, "text": (echoes[p_idx] if first else "") + text}
                if req.logprobs is not None:
                    lp = _logprobs(ctx, out, n_tok, req.logprobs, text_offset.get(index, 0))
                    text_offset[index] = text_offset.get(index, 0) + sum(len(t) for t in lp.tokens)
                    choice["logprobs"] = lp.model_dump()
                else:
                    choice["logprobs"] = None
                choice["finish_reason"] = out.finish_reason
                if out.finish_reason is not None:
                    choice["stop_reason"] = out.stop_reason
                    done.add(index)
                sent_text[index] = len(out.text)
                sent_tokens[index] = len(out.token_ids)
                chunk = {"id": request_id, "object": "text_completion", "created": created, "model": model,
                         "choices": [choice]}  # fmt: skip
                if req.include_usage():
                    chunk["usage"] = None
                yield sse(chunk)
        usage = usage_of(prompt_lens, [f for f in finals if f is not None])
        if req.include_usage():
            yield sse({"id": request_id, "object": "text_completion", "created": created, "model": model,
                       "choices": [], "usage": usage.model_dump()})  # fmt: skip
        if req.program_id is not None:
            yield sse_usage(usage)
    except Exception as exc:
        yield sse_error(exc)
    finally:
        ctx.abort_all(streams)
    yield SSE_DONE
