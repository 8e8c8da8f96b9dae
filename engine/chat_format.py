"""One chat normalization: an OpenAI chat body -> what the chat template renders -> prompt ids.

The engine server and the router both call :func:`chat_prompt_ids`, so the router's block
hashes are computed over exactly the ids the engine caches (precise prefix affinity).
Torch-free: the router imports it.

Input is the JSON-decoded body (plain dicts). The engine validates it with its pydantic
models first; the router only lightly, so anything malformed here is a ``ValueError``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

RESERVED_TEMPLATE_VARS = frozenset({"messages", "tools", "documents", "add_generation_prompt"})
"""Template variables ``chat_template_kwargs`` may not override (the normalization sets them)."""

_FUNCTION_KEYS = ("name", "description", "parameters", "strict")


class ChatTokenizer(Protocol):
    """What :func:`chat_prompt_ids` needs (``shoal.engine.tokenizer.Tokenizer`` has it)."""

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> list[int]: ...


@dataclass(frozen=True)
class ChatTemplateInputs:
    """Everything the chat template is rendered with."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    """None when the request has no tools or ``tool_choice`` is ``"none"``."""
    add_generation_prompt: bool = True
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    """``chat_template_kwargs``: extra template variables (e.g. ``enable_thinking``)."""


def chat_template_inputs(body: Mapping[str, Any]) -> ChatTemplateInputs:
    """Normalize an OpenAI chat body for the chat template.

    ``developer`` becomes ``system``; null content becomes ``""``; text parts are joined
    with newlines; assistant tool-call arguments are parsed into objects (kept as the
    string when not JSON); tool results keep ``tool_call_id``; names are kept; tools are
    dropped by ``tool_choice: "none"`` and narrowed to the named one by a named choice.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty array")
    add_generation_prompt = body.get("add_generation_prompt", True)
    if not isinstance(add_generation_prompt, bool):
        raise ValueError("'add_generation_prompt' must be a boolean")
    return ChatTemplateInputs(
        messages=template_messages(messages),
        tools=template_tools(body.get("tools"), body.get("tool_choice")),
        add_generation_prompt=add_generation_prompt,
        template_kwargs=_template_kwargs(body.get("chat_template_kwargs")),
    )


def chat_prompt_ids(tokenizer: ChatTokenizer, body: Mapping[str, Any]) -> list[int]:
    """The prompt token ids of a chat body: the only way from messages to ids (engine and router)."""
    inputs = chat_template_inputs(body)
    return list(
        tokenizer.encode_chat(inputs.messages, inputs.tools, inputs.add_generation_prompt, **inputs.template_kwargs)
    )


def template_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them (see :func:`chat_template_inputs`)."""
    return [_message(i, m) for i, m in enumerate(messages)]


def template_tools(tools: Any, tool_choice: Any = None) -> list[dict[str, Any]] | None:
    """The tool definitions the template renders, after ``tool_choice``; None for no tools."""
    if not tools or tool_choice == "none":
        return None
    if not isinstance(tools, list):
        raise ValueError("'tools' must be an array")
    out = [_tool(i, t) for i, t in enumerate(tools)]
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str):
            raise ValueError("a named 'tool_choice' needs function.name")
        out = [t for t in out if t["function"]["name"] == name]
        if not out:
            raise ValueError(f"tool_choice names an unknown function {name!r}")
    return out


# internals ----------------------------------------------------------------------------------------


def _message(index: int, message: Any) -> dict[str, Any]:
    if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
        raise ValueError(f"messages[{index}] must be an object with a string 'role'")
    role = "system" if message["role"] == "developer" else message["role"]
    out: dict[str, Any] = {"role": role, "content": _text(index, message.get("content"))}
    name = message.get("name")
    if name:
        out["name"] = name
    calls = message.get("tool_calls")
    if role == "assistant" and calls:
        if not isinstance(calls, list):
            raise ValueError(f"messages[{index}].tool_calls must be an array")
        out["tool_calls"] = [_tool_call(index, c) for c in calls]
    if role == "tool":
        out["tool_call_id"] = message.get("tool_call_id")
    return out


def _text(index: int, content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"messages[{index}].content: only text parts are supported")
            texts.append(part["text"])
        return "\n".join(texts)
    raise ValueError(f"messages[{index}].content must be a string, an array of text parts, or null")


def _tool_call(index: int, call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise ValueError(f"messages[{index}].tool_calls: each call needs function.name")
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        raise ValueError(f"messages[{index}].tool_calls: function.arguments must be a JSON string")
    return {"id": call.get("id"), "type": "function",
            "function": {"name": function["name"], "arguments": _json_or_str(arguments)}}  # fmt: skip


def _json_or_str(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def _tool(index: int, tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise ValueError(f"tools[{index}] must be {{'type': 'function', 'function': {{'name': ...}}}}")
    kept = {k: function[k] for k in _FUNCTION_KEYS if function.get(k) is not None}
    return {"type": "function", "function": kept}


def _template_kwargs(kwargs: Any) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError("'chat_template_kwargs' must be an object")
    reserved = sorted(RESERVED_TEMPLATE_VARS & set(kwargs))
    if reserved:
        raise ValueError(f"'chat_template_kwargs' may not set {reserved}")
    # Template variables are names: anything else can only break the renderer's call.
    bad = sorted(k for k in kwargs if not k.isidentifier() or k.startswith("_"))
    if bad:
        raise ValueError(f"'chat_template_kwargs' keys must be template variable names, got {bad[:3]}")
    return dict(kwargs)
