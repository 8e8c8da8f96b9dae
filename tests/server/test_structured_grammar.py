"""The forced tool-call grammar writes exactly what the tool-call parser reads back (no model needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shoal.engine.sampling_params import StructuredOutput
from shoal.engine.server.tool_call_grammar import calls_or_answer, forced_tool_calls
from shoal.engine.server.tool_calls import parse_tool_calls
from shoal.engine.structured import GrammarCompiler, GrammarError
from support.tiny_models import write_smollm2_tokenizer

COLOR = {"enum": ["red", "blue"]}
PAINT = {
    "$defs": {"color": COLOR},
    "type": "object",
    "properties": {"fg": {"$ref": "#/$defs/color"}},
    "required": ["fg"],
}
ADD = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "paint", "parameters": PAINT}},
    {"type": "function", "function": {"name": "add", "parameters": ADD}},
]


@pytest.fixture(scope="module")
def compiler(tmp_path_factory: pytest.TempPathFactory) -> GrammarCompiler:
    from shoal.engine.tokenizer import Tokenizer

    folder = tmp_path_factory.mktemp("tok")
    write_smollm2_tokenizer(folder)
    tokenizer = Tokenizer.from_hf_folder(folder)
    return GrammarCompiler(tokenizer, tokenizer.vocab_size, tokenizer.eos_token_ids)


def accepts(compiler: GrammarCompiler, spec: StructuredOutput, text: str) -> bool:
    matcher = compiler.matcher(spec)
    tokenizer = compiler._tokenizer
    return matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False)) and matcher.is_accepting()


def block(name: str, args: dict[str, Any]) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(args)}}}\n</tool_call>'


def test_forced_calls_round_trip_through_the_parser(compiler: GrammarCompiler) -> None:
    text = block("paint", {"fg": "red"}) + "\n" + block("add", {"a": 7})
    assert accepts(compiler, forced_tool_calls(TOOLS, parallel=True), text)
    content, calls = parse_tool_calls(text)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("paint", {"fg": "red"}), ("add", {"a": 7})]


def test_forced_calls_reject_what_the_tools_do_not_allow(compiler: GrammarCompiler) -> None:
    spec = forced_tool_calls(TOOLS, parallel=True)
    assert not accepts(compiler, spec, block("paint", {"fg": "green"}))  # $ref'd enum still enforced
    assert not accepts(compiler, spec, block("other", {"a": 1}))
    assert not accepts(compiler, spec, "Sure! " + block("add", {"a": 1}))  # no content before a forced call
    one = forced_tool_calls(TOOLS[1:], parallel=False)
    assert accepts(compiler, one, block("add", {"a": 1}))
    assert not accepts(compiler, one, block("add", {"a": 1}) + "\n" + block("add", {"a": 2}))
    assert not accepts(compiler, one, block("paint", {"fg": "red"}))


def test_calls_or_answer(compiler: GrammarCompiler) -> None:
    spec = calls_or_answer(
        TOOLS, True, {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    )
    assert accepts(compiler, spec, '{"x": 3}')
    assert accepts(compiler, spec, block("add", {"a": 1}))
    assert not accepts(compiler, spec, '{"y": 3}')


def test_tool_parameters_past_the_limits_are_grammar_errors() -> None:
    huge = {"type": "object", "properties": {"e": {"enum": list(range(2000))}}}
    with pytest.raises(GrammarError, match="2000 values"):
        forced_tool_calls([{"type": "function", "function": {"name": "f", "parameters": huge}}], True)
