"""Tool calls in the Qwen/Hermes style: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

:class:`StreamingToolParser` splits generated text, as it arrives, into content and
:class:`ToolCallDelta` s the way OpenAI streams them: a call's first delta carries its
id and name (with ``arguments == ""``) as soon as ``{"name": "...", "arguments": `` is
complete, then the raw argument text follows in pieces. Anything that could still
become a tag is held back, so ``<tool_call>`` never leaks into streamed content.
:func:`parse_tool_calls` runs the same parser over a whole completion, so a streamed
call reassembles to exactly the non-streamed one. A block that is not a call stays
content (nothing the model wrote is lost), unless its id and name were already sent: then
the call stands with the argument text the model wrote (cut short when generation stopped).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"([a-zA-Z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*(?=\{)')
"""The start of a call body up to its arguments object (name first, as the grammar writes it)."""


@dataclass(frozen=True)
class ParsedToolCall:
    """One function call the model asked for; ``arguments`` is a JSON string as in OpenAI's API."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of call ``index``: the first carries ``id`` and ``name``; the rest argument text."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_call_body(body: str) -> ParsedToolCall | None:
    """The call inside one ``<tool_call>`` block, or None when it is not one."""
    try:
        obj = json.loads(body.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ParsedToolCall(new_call_id(), obj["name"], arguments)


def parse_tool_calls(text: str) -> tuple[str | None, list[ParsedToolCall]]:
    """Split a whole completion into (content or None, tool calls)."""
    parser = StreamingToolParser()
    content, deltas = parser.feed(text)
    tail, more = parser.finish()
    content += tail
    calls = merge_deltas(deltas + more)
    if calls:
        content = content.strip()
    return (content or None), calls


def merge_deltas(deltas: list[ToolCallDelta]) -> list[ParsedToolCall]:
    """Whole calls from their deltas (what a streaming client reassembles)."""
    heads: dict[int, ToolCallDelta] = {}
    arguments: dict[int, list[str]] = {}
    for d in deltas:
        if d.id is not None:
            heads[d.index] = d
        arguments.setdefault(d.index, []).append(d.arguments)
    return [ParsedToolCall(h.id or "", h.name or "", "".join(arguments[i])) for i, h in sorted(heads.items())]


def _held_back(buffer: str, tag: str) -> int:
    """Length of the longest suffix of ``buffer`` that is a proper prefix of ``tag``."""
    for size in range(min(len(buffer), len(tag) - 1), 0, -1):
        if tag.startswith(buffer[-size:]):
            return size
    return 0


def json_value_end(text: str) -> int | None:
    """Index just past the JSON object or array at the start of ``text``; None while it is open."""
    depth = 0
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


class StreamingToolParser:
    """Feed text deltas; get back content deltas and tool-call deltas."""

    def __init__(self) -> None:
        self._buffer = ""
        self._in_call = False
        self._call_id: str | None = None
        """Set once the current call's header (id, name) went out."""
        self._args_start = 0
        self._args_sent = 0
        self.num_calls = 0

    def feed(self, delta: str) -> tuple[str, list[ToolCallDelta]]:
        self._buffer += delta
        content: list[str] = []
        calls: list[ToolCallDelta] = []
        while True:
            if self._in_call:
                end = self._buffer.find(CLOSE_TAG)
                if end < 0:
                    self._stream_arguments(
                        self._buffer[: len(self._buffer) - _held_back(self._buffer, CLOSE_TAG)], calls
                    )
                    break
                body = self._buffer[:end]
                self._buffer = self._buffer[end + len(CLOSE_TAG) :]
                self._close(body, content, calls, closed=True)
                continue
            start = self._buffer.find(OPEN_TAG)
            if start >= 0:
                content.append(self._buffer[:start].rstrip())
                self._buffer = self._buffer[start + len(OPEN_TAG) :]
                self._in_call = True
                continue
            keep = _held_back(self._buffer, OPEN_TAG)
            # Trailing whitespace waits too: it is noise when a call follows.
            emit = self._buffer[: len(self._buffer) - keep]
            stripped = emit.rstrip()
            content.append(stripped)
            self._buffer = self._buffer[len(stripped) :]
            break
        return self._tidy("".join(content)), calls

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """Flush at the end of the completion (an unterminated call is parsed if it is whole JSON)."""
        content: list[str] = []
        calls: list[ToolCallDelta] = []
        if self._in_call:
            self._close(self._buffer, content, calls, closed=False)
        elif not self.num_calls or self._buffer.strip():
            content.append(self._buffer)
        self._buffer = ""
        return self._tidy("".join(content)), calls

    def _stream_arguments(self, body: str, calls: list[ToolCallDelta]) -> None:
        """Send the call's header once it is complete, then any new argument text."""
        if self._call_id is None:
            match = _HEADER.match(body)
            if match is None:
                return
            self._call_id = new_call_id()
            self._args_start, self._args_sent = match.end(), 0
            calls.append(ToolCallDelta(self.num_calls, "", self._call_id, match.group(1)))
        args = body[self._args_start :]
        end = json_value_end(args)
        upto = len(args) if end is None else end
        if upto > self._args_sent:
            calls.append(ToolCallDelta(self.num_calls, args[self._args_sent : upto]))
            self._args_sent = upto

    def _close(self, body: str, content: list[str], calls: list[ToolCallDelta], closed: bool) -> None:
        self._in_call = False
        self._stream_arguments(body, calls)
        if self._call_id is not None:  # its id and name went out already: the call stands
            self._end_call()
            return
        call = parse_call_body(body)
        if call is None:
            content.append(OPEN_TAG + body + (CLOSE_TAG if closed else ""))
            return
        calls.append(ToolCallDelta(self.num_calls, call.arguments, call.id, call.name))
        self._end_call()

    def _end_call(self) -> None:
        self._call_id = None
        self.num_calls += 1

    def _tidy(self, content: str) -> str:
        # Once calls started, whitespace between blocks is not content.
        return "" if self.num_calls and not content.strip() else content
