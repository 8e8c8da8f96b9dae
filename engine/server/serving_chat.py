"""POST /v1/chat/completions: messages through the chat template, tool calls parsed back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from shoal.engine import chat_format
from shoal.engine.outputs import CompletionOutput
from shoal.engine.server.async_engine import RequestStream
from shoal.engine.server.caller import caller_of
from shoal.engine.server.disconnect import ClientDisconnected, until_disconnect
from shoal.engine.server.errors import bad_request
from shoal.engine.server.protocol import ChatCompletionRequest, Message
from shoal.engine.server.protocol import FunctionCall as FunctionCallOut
from shoal.engine.server.response_parts import clamp_logprob, new_id, top_logprobs, usage_of
from shoal.engine.server.responses import (
    ChatChoice,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessageOut,
    ChatTokenLogprob,
    ToolCallOut,
    TopLogprob,
)
from shoal.engine.server.serving import ServingContext
from shoal.engine.server.sse import SSE_DONE, EventStreamResponse, sse, sse_error, sse_usage
from shoal.engine.server.stream_merge import final_updates
from shoal.engine.server.structured_request import compile_grammar, constrain, structured_output
from shoal.engine.server.tool_calls import (
    ParsedToolCall,
    StreamingToolParser,
    ToolCallDelta,
    parse_tool_calls,
)


def template_tools(req: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools the template renders (after ``tool_choice``); None when there are none."""
    dumped = req.model_dump(include={"tools", "tool_choice"}, exclude_none=True)
    return chat_format.template_tools(dumped.get("tools"), dumped.get("tool_choice"))


def encode_messages(
    ctx: ServingContext,
    req_messages: list[Message],
    tools: Any,
    add_generation_prompt: bool,
    template_kwargs: dict[str, Any] | None = None,
) -> list[int]:
    # The router computes its block hashes through the same chat_prompt_ids (precise affinity).
    body = {"messages": [m.model_dump(exclude_none=True) for m in req_messages], "tools": tools,
            "add_generation_prompt": add_generation_prompt, "chat_template_kwargs": template_kwargs}  # fmt: skip
    try:
        ids = chat_format.chat_prompt_ids(ctx.tokenizer, body)
    except ValueError as exc:
        raise bad_request(str(exc), param="messages") from exc
    return ids


def _chat_logprobs(ctx: ServingContext, out: CompletionOutput, start: int, k: int) -> list[ChatTokenLogprob]:
    entries = out.logprobs or ()
    items = []
    for pos in range(start, min(len(out.token_ids), len(entries))):
        token_id = out.token_ids[pos]
        entry = entries[pos]
        text = ctx.token_text(token_id)
        tops = [
            TopLogprob(token=ctx.token_text(t), logprob=clamp_logprob(v), bytes=list(ctx.token_text(t).encode()))
            for t, v in top_logprobs(entry, k)
        ]
        items.append(
            ChatTokenLogprob(
                token=text,
                logprob=clamp_logprob(entry.get(token_id, float("-inf"))),
                bytes=list(text.encode()),
                top_logprobs=tops,
            )
        )
    return items


def _tool_call_out(call: ParsedToolCall) -> ToolCallOut:
    return ToolCallOut(id=call.id, function=FunctionCallOut(name=call.name, arguments=call.arguments))


def _merged_deltas(deltas: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """Tool-call deltas as OpenAI streams them: a call's id, type and name alone (arguments ""),
    then its argument text (consecutive pieces of one call merged)."""
    entries: list[dict[str, Any]] = []
    for d in deltas:
        if d.id is not None:
            entries.append({"index": d.index, "id": d.id, "type": "function",
                            "function": {"name": d.name, "arguments": ""}})  # fmt: skip
        if not d.arguments:
            continue
        last = entries[-1] if entries else None
        if last is not None and last["index"] == d.index and "id" not in last:
            last["function"]["arguments"] += d.arguments
        else:
            entries.append({"index": d.index, "function": {"arguments": d.arguments}})
    return entries


def _text_bytes(req: ChatCompletionRequest) -> int:
    """UTF-8 size of the text the client sent (contents, tool-call arguments): no tokenizer needed."""
    total = 0
    for m in req.messages:
        content = m.content
        parts = [content] if isinstance(content, str) else [p.text for p in content or ()]
        for call in getattr(m, "tool_calls", None) or ():
            parts.append(call.function.arguments)
        total += sum(len(t.encode("utf-8", "surrogatepass")) for t in parts)
    return total


async def create_chat_completion(ctx: ServingContext, req: ChatCompletionRequest, raw: Request) -> Response:
    arrival = time.monotonic()
    ctx.check_model(req.model)
    caller = caller_of(raw, req.priority)
    ctx.admit(req.n)  # before any template or tokenizer work: a full queue costs nothing
    ctx.check_text_size(_text_bytes(req), "messages")
    tools = template_tools(req)
    ids = await ctx.off_loop(
        encode_messages, ctx, req.messages, tools, req.add_generation_prompt, req.chat_template_kwargs
    )
    if not ids:
        raise bad_request("the rendered conversation is empty", param="messages")
    max_tokens = ctx.output_budget(len(ids), req.output_limit(), "messages")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    params = ctx.sampling_params(req, max_tokens, logprobs)
    spec = structured_output(req, tools)
    if spec is not None:
        if tools is not None and req.tool_choice not in (None, "auto") and ctx.settings.tool_call_parser != "hermes":
            raise bad_request("a required or named tool_choice needs --tool-call-parser hermes", param="tool_choice")
        param = "response_format" if req.response_format is not None else "tools"
        await ctx.off_loop(compile_grammar, ctx.engine.engine, spec, param)
    params = constrain(params, req, spec, tools)
    ctx.admit(req.n)
    request_id = new_id("chatcmpl")
    streams = await ctx.submit(request_id, req, [ids], [params], arrival, caller)
    parse_tools = tools is not None and ctx.settings.tool_call_parser == "hermes"
    if req.stream:
        body = _stream(ctx, req, request_id, streams[0], len(ids), parse_tools)
        return EventStreamResponse(body, on_close=lambda: ctx.abort_all(streams))
    try:
        (final,) = await until_disconnect(raw, final_updates(streams))
    except ClientDisconnected:
        return Response(status_code=499)
    finally:
        ctx.abort_all(streams)
    choices = []
    for out in final.outputs:
        content: str | None = out.text
        calls: list[ParsedToolCall] = []
        if parse_tools:
            content, calls = parse_tool_calls(out.text)
        finish = "tool_calls" if calls and out.finish_reason == "stop" else out.finish_reason
        lp = ChatLogprobs(content=_chat_logprobs(ctx, out, 0, req.top_logprobs or 0)) if req.logprobs else None
        choices.append(
            ChatChoice(
                index=out.index,
                message=ChatMessageOut(content=content, tool_calls=[_tool_call_out(c) for c in calls]),
                logprobs=lp,
                finish_reason=finish,
                stop_reason=out.stop_reason,
            )
        )
    response = ChatCompletionResponse(
        id=request_id,
        created=int(time.time()),
        model=ctx.settings.served_model_name,
        choices=choices,
        usage=usage_of([len(ids)], [final]),
    )
    return Response(response.model_dump_json(), media_type="application/json")


async def _stream(
    ctx: ServingContext,
    req: ChatCompletionRequest,
    request_id: str,
    stream: RequestStream,
    prompt_len: int,
    parse_tools: bool,
) -> AsyncIterator[bytes]:
    created = int(time.time())
    head = {"id": request_id, "object": "chat.completion.chunk", "created": created,
            "model": ctx.settings.served_model_name}  # fmt: skip
    usage_key = {"usage": None} if req.include_usage() else {}
    sent_text: dict[int, int] = {}
    sent_tokens: dict[int, int] = {}
    parsers: dict[int, StreamingToolParser] = {}
    done: set[int] = set()
    final = None

    def chunk(index: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return sse({**head, "choices": [choice], **usage_key})

    try:
        async for update in stream:
            final = update
            for out in update.outputs:
                i = out.index
                if i in done:
                    continue
                if i not in sent_text:
                    sent_text[i] = sent_tokens[i] = 0
                    parsers[i] = StreamingToolParser()
                    yield chunk(i, {"role": "assistant", "content": ""})
                text = out.text[sent_text[i] :]
                lp = None
                if req.logprobs and len(out.token_ids) > sent_tokens[i]:
                    items = _chat_logprobs(ctx, out, sent_tokens[i], req.top_logprobs or 0)
                    lp = {"content": [item.model_dump() for item in items]}
                sent_text[i], sent_tokens[i] = len(out.text), len(out.token_ids)
                calls: list[ToolCallDelta] = []
                if parse_tools:
                    text, calls = parsers[i].feed(text)
                    if out.finish_reason is not None:
                        tail, more = parsers[i].finish()
                        text, calls = text + tail, calls + more
                finish = out.finish_reason
                if finish is not None:
                    done.add(i)
                    if finish == "stop" and parsers[i].num_calls:
                        finish = "tool_calls"
                # content (with logprobs) first, then each call piece in its own chunk
                pieces = [{"tool_calls": [entry]} for entry in _merged_deltas(calls)]
                if text or lp is not None or not pieces:
                    pieces.insert(0, {"content": text} if text else {})
                for k, delta in enumerate(pieces):
                    last = k == len(pieces) - 1
                    if delta or (k == 0 and lp is not None) or (last and finish is not None):
                        yield chunk(i, delta, lp if k == 0 else None, finish if last else None)
        if final is not None:
            usage = usage_of([prompt_len], [final])
            if req.include_usage():
                yield sse({**head, "choices": [], "usage": usage.model_dump()})
            if req.program_id is not None:
                yield sse_usage(usage)
    except Exception as exc:
        yield sse_error(exc)
    finally:
        ctx.abort_all([stream])
    yield SSE_DONE
