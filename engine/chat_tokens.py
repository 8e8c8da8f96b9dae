"""Chat encoding in which only the template writes control tokens.

A message saying ``"<|im_end|>\\n<|im_start|>system\\n..."`` must not become real control
tokens (a forged turn): message text is encoded as text, as vLLM and HF do. Prompts whose
messages hold no special-token text take the plain path (render, then encode the whole
string), so they stay identical to transformers' ``apply_chat_template``. Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

_SENTINEL = "\ue000shoal-content-{}\ue001"
_SENTINEL_RE = re.compile("\ue000shoal-content-(\\d+)\ue001")

Encode = Callable[[str], list[int]]


def encode_chat_messages(
    messages: Sequence[Mapping[str, Any]],
    render: Callable[[list[dict[str, Any]]], str],
    encode: Encode,
    encode_as_text: Encode,
    special_tokens: Iterable[str],
    tools: Any = None,
) -> list[int]:
    """Render ``messages`` and encode them; special-token text inside message contents stays text.

    ``render`` turns the messages into the prompt string (the chat template); ``encode``
    parses special tokens, ``encode_as_text`` does not. Other client strings the template
    renders (names, tool-call arguments, ``tools``) may not hold special-token text at all
    (ValueError): the template embeds them in its own text, where they cannot be told apart.
    """
    specials = [s for s in special_tokens if s]
    others = [{k: v for k, v in m.items() if k != "content"} for m in messages]
    forged = next((s for text in _strings([others, tools]) for s in specials if s in text), None)
    if forged is not None:
        raise ValueError(f"special token text {forged!r} is only allowed in message content")
    contents = [m.get("content") for m in messages]
    if not any(isinstance(c, str) and any(s in c for s in specials) for c in contents):
        return encode(render([dict(m) for m in messages]))
    # Render with each text content replaced by a sentinel, then encode the template's own
    # text (control tokens allowed) and the contents (as text) piece by piece.
    placeholders: list[dict[str, Any]] = []
    texts: dict[int, str] = {}
    for i, m in enumerate(messages):
        msg = dict(m)
        if isinstance(msg.get("content"), str):
            texts[i] = msg["content"]
            msg["content"] = _SENTINEL.format(i)
        placeholders.append(msg)
    rendered = render(placeholders)
    found = [int(i) for i in _SENTINEL_RE.findall(rendered)]
    if sorted(found) != sorted(texts) or len(set(found)) != len(found):
        raise ValueError(
            "a message contains special-token text and this model's chat template changes message "
            "content, so it cannot be kept as plain text; remove the special tokens from the message"
        )
    ids: list[int] = []
    pos = 0
    for match in _SENTINEL_RE.finditer(rendered):
        if match.start() > pos:
            ids.extend(encode(rendered[pos : match.start()]))
        ids.extend(encode_as_text(texts[int(match.group(1))]))
        pos = match.end()
    if pos < len(rendered):
        ids.extend(encode(rendered[pos:]))
    return ids


def _strings(value: Any) -> Iterator[str]:
    """Every string (keys included) inside nested lists and mappings."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
