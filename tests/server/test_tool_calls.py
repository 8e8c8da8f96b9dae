"""The Hermes/Qwen ``<tool_call>`` parser, whole and streamed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shoal.engine.server.tool_calls import StreamingToolParser, merge_deltas, parse_tool_calls

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'


def stream(text: str, cut: int) -> tuple[str, list[tuple[str, str]]]:
    """Feed ``text`` in pieces of ``cut`` characters."""
    parser = StreamingToolParser()
    content = ""
    deltas: list[Any] = []
    for i in range(0, len(text), cut):
        c, ds = parser.feed(text[i : i + cut])
        content, deltas = content + c, deltas + ds
    c, ds = parser.finish()
    return content + c, [(x.name, x.arguments) for x in merge_deltas(deltas + ds)]


def test_single_call() -> None:
    content, calls = parse_tool_calls(CALL)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "C"})
    ]


def test_text_then_two_calls() -> None:
    content, calls = parse_tool_calls("Let me check.\n" + CALL + "\n" + CALL.replace("Paris", "Rome"))
    assert content == "Let me check."
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert len({c.id for c in calls}) == 2


def test_invalid_body_stays_content() -> None:
    text = "<tool_call>not json</tool_call>"
    assert parse_tool_calls(text) == (text, [])
    assert parse_tool_calls("a < b and <tool") == ("a < b and <tool", [])


def test_unterminated_call_is_parsed_at_the_end() -> None:
    content, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}')
    assert content is None and [(c.name, c.arguments) for c in calls] == [("f", "{}")]


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 11, 1000])
def test_streaming_never_leaks_tags(cut: int) -> None:
    text = "Sure thing. " + CALL + "\n"
    content, calls = stream(text, cut)
    assert content == "Sure thing."
    assert calls == [("get_weather", '{"city": "Paris", "unit": "C"}')]


@pytest.mark.parametrize("cut", [1, 4, 1000])
def test_streaming_plain_text_is_unchanged(cut: int) -> None:
    text = "No tools here, just <b>text</b> and a < sign.  \n"
    assert stream(text, cut) == (text, [])
