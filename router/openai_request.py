"""Parsing and light validation of OpenAI request bodies, and the ids the router routes on.

The router checks only what it must to route and to reject malformed bodies without
contacting an engine; the engine validates the rest of its parameters itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shoal.engine.sampling_params import SamplingParams
from shoal.router.errors import bad_request

Kind = Literal["chat", "completion"]
PROGRAM_HEADER = "x-shoal-program-id"
SESSION_HEADER = "x-session-id"

_INT_FIELDS = ("n", "max_tokens", "max_completion_tokens", "min_tokens", "top_k", "seed", "best_of")
_NUM_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
_SAMPLING_KEYS = ("n", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                  "repetition_penalty", "min_tokens")  # fmt: skip


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request body plus what routing needs from it."""

    kind: Kind
    body: dict[str, Any]
    model: str
    stream: bool
    program_id: str | None
    session_id: str | None
    max_tokens: int | None
    raw: bytes = b""
    """The body as received (forwarded as is when the model name needs no rewrite)."""
    _text: list[str] = field(default_factory=list, repr=False, compare=False)

    def prompt_text(self) -> str:
        """All prompt text (messages' text parts, or the completion prompt), for rules and hashing."""
        if not self._text:
            self._text.append(_prompt_text(self.kind, self.body))
        return self._text[0]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _prompt_text(kind: Kind, body: Mapping[str, Any]) -> str:
    if kind == "chat":
        return "\n".join(f"{m.get('role')}: {_content_text(m.get('content'))}" for m in body["messages"])
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return prompt
    if prompt and isinstance(prompt[0], str):
        return "\n".join(prompt)
    return ""


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a string 'role'", "messages")
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(f"messages[{i}].content must be a string or an array of parts", "messages")


def _check_prompt(prompt: Any) -> None:
    ok = isinstance(prompt, str) or (
        isinstance(prompt, list)
        and bool(prompt)
        and (
            all(isinstance(p, str) for p in prompt)
            or all(_is_int(p) for p in prompt)
            or all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt)
        )
    )
    if not ok:
        raise bad_request("'prompt' must be a string, an array of strings, or token ids", "prompt")


def _first_str(*values: Any) -> str | None:
    for value in values:
        if isinstance(value, str) and value:
            return value
    return None


def _has_lone_surrogate(body: Any) -> bool:
    # Only \uD800-\uDFFF escapes can produce one; re-encoding finds it at C speed.
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def parse_request(kind: Kind, raw: bytes, headers: Mapping[str, str]) -> ParsedRequest:
    """Parse and check a body; raises RouterError (400) naming the problem."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad_request("request body is nested too deeply") from None
    if b"\\u" in raw and _has_lone_surrogate(body):
        raise bad_request("request body contains a lone UTF-16 surrogate escape (not valid Unicode)")
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required and must be a non-empty string", "model")
    if kind == "chat":
        _check_messages(body.get("messages"))
    else:
        if "prompt" not in body:
            raise bad_request("'prompt' is required", "prompt")
        _check_prompt(body["prompt"])
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    extra = body.get("extra_body")
    if extra is not None and not isinstance(extra, dict):
        raise bad_request("'extra_body' must be an object", "extra_body")
    extra = extra or {}
    for name in _INT_FIELDS:
        value = body.get(name, extra.get(name))
        if value is not None and not _is_int(value):
            raise bad_request(f"'{name}' must be an integer", name)
    for name in _NUM_FIELDS:
        value = body.get(name, extra.get(name))
        if value is not None and not _is_num(value):
            raise bad_request(f"'{name}' must be a number", name)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise bad_request("'stop' must be a string or an array of strings", "stop")
    # Ranges are checked by the engine's own SamplingParams, so both agree on what is valid.
    kwargs = {k: body.get(k, extra.get(k)) for k in _SAMPLING_KEYS}
    try:
        SamplingParams(
            **{k: v for k, v in kwargs.items() if v is not None},
            max_tokens=max_tokens,
            stop=tuple([stop] if isinstance(stop, str) else stop or ()),
        )
    except (ValueError, TypeError) as exc:
        raise bad_request(str(exc)) from None

    program_id = _first_str(body.get("program_id"), extra.get("program_id"), headers.get(PROGRAM_HEADER))
    session_id = _first_str(headers.get(SESSION_HEADER), body.get("user"))
    return ParsedRequest(kind, body, model, stream, program_id, session_id, max_tokens, raw)
