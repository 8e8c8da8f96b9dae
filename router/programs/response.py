"""Reads what the scheduler needs from an engine's answer as it passes through the router:
the usage (prompt, completion and cached tokens) and the tool names the assistant asked for.

Non-streamed answers carry ``usage`` in the body; streamed ones end with the engine's
``: shoal-usage {...}`` SSE comment (contracts.md) or a ``usage`` chunk.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

_USAGE_COMMENT = b": shoal-usage "


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


def _usage(value: Any) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    cached = value.get("cached_tokens")
    details = value.get("prompt_tokens_details")
    if not isinstance(cached, int) and isinstance(details, dict):
        cached = details.get("cached_tokens")
    return Usage(prompt, completion, cached if isinstance(cached, int) else 0)


def _tool_names(choices: Any, key: str) -> list[str]:
    names: list[str] = []
    if not isinstance(choices, list):
        return names
    for choice in choices:
        part = choice.get(key) if isinstance(choice, dict) else None
        calls = part.get("tool_calls") if isinstance(part, dict) else None
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if isinstance(name, str) and name:
                names.append(name)
    return names


class ResponseObserver:
    """Fed the response bytes (whole body or SSE chunks); keeps usage and tool names."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.tools: list[str] = []
        self._tail = b""

    def feed_body(self, body: bytes) -> None:
        """A whole (non-streamed) JSON answer."""
        try:
            data = json.loads(body)
        except ValueError:
            return
        if isinstance(data, dict):
            self.usage = _usage(data.get("usage")) or self.usage
            self.tools.extend(_tool_names(data.get("choices"), "message"))

    def feed_chunk(self, chunk: bytes) -> None:
        """Part of an SSE stream; lines may be split across chunks."""
        data = self._tail + chunk
        cut = data.rfind(b"\n")
        if cut == -1:
            self._tail = data[-65536:]
            return
        self._tail = data[cut + 1 :]
        for line in data[:cut].split(b"\n"):
            if line.startswith(_USAGE_COMMENT):
                self._parse_usage_comment(line[len(_USAGE_COMMENT) :])
            elif line.startswith(b"data: {") and (b'"tool_calls"' in line or b'"usage"' in line):
                self._parse_event(line[6:])

    def _parse_usage_comment(self, payload: bytes) -> None:
        with contextlib.suppress(ValueError):
            self.usage = _usage(json.loads(payload)) or self.usage

    def _parse_event(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        self.usage = _usage(event.get("usage")) or self.usage
        self.tools.extend(_tool_names(event.get("choices"), "delta"))
