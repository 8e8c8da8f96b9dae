"""Tool calls in the Qwen/Hermes style: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

:func:`parse_tool_calls` splits a finished completion into content and calls;
:class:`StreamingToolParser` does the same incrementally, holding back anything
that could still become a tag so ``<tool_call>`` never leaks into streamed content.
A block whose body is not a valid call stays content (nothing the model wrote is lost).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


@dataclass(frozen=True)
class ParsedToolCall:
    """One function call the model asked for; ``arguments`` is a JSON string as in OpenAI's API."""

    id: str
    name: str
    arguments: str


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
    content, calls = parser.feed(text)
    tail, more = parser.finish()
    content += tail
    calls += more
    if calls:
        content = content.strip()
    return (content or None), calls


def _held_back(buffer: str, tag: str) -> int:
    """Length of the longest suffix of ``buffer`` that is a proper prefix of ``tag``."""
    for size in range(min(len(buffer), len(tag) - 1), 0, -1):
        if tag.startswith(buffer[-size:]):
            return size
    return 0


class StreamingToolParser:
    """Feed text deltas; get back content deltas and completed tool calls."""

    def __init__(self) -> None:
        self._buffer = ""
        self._in_call = False
        self.num_calls = 0

    def feed(self, delta: str) -> tuple[str, list[ParsedToolCall]]:
        self._buffer += delta
        content: list[str] = []
        calls: list[ParsedToolCall] = []
        while True:
            if self._in_call:
                end = self._buffer.find(CLOSE_TAG)
                if end < 0:
                    break
                body = self._buffer[:end]
                self._buffer = self._buffer[end + len(CLOSE_TAG) :]
                self._in_call = False
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

    def finish(self) -> tuple[str, list[ParsedToolCall]]:
        """Flush at the end of the completion (an unterminated call is parsed if it is whole JSON)."""
        content: list[str] = []
        calls: list[ParsedToolCall] = []
        if self._in_call:
            self._close(self._buffer, content, calls, closed=False)
        elif not self.num_calls or self._buffer.strip():
            content.append(self._buffer)
        self._buffer = ""
        self._in_call = False
        return self._tidy("".join(content)), calls

    def _close(self, body: str, content: list[str], calls: list[ParsedToolCall], closed: bool) -> None:
        call = parse_call_body(body)
        if call is None:
            content.append(OPEN_TAG + body + (CLOSE_TAG if closed else ""))
            return
        calls.append(call)
        self.num_calls += 1

    def _tidy(self, content: str) -> str:
        # Once calls started, whitespace between blocks is not content.
        return "" if self.num_calls and not content.strip() else content
