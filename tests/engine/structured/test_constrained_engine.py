"""Constrained decoding in the engine: masks per row, mixed batches, n>1, preemption, stops, logprobs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from shoal.engine import LLM, SamplingParams
from shoal.engine.sampling_params import StructuredOutput
from shoal.engine.structured import GrammarError

PROMPT = "the quick brown fox jumps over the lazy dog and then"
CODE = r"[0-9]{3}-[a-z]{2,4}"
SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "level": {"type": "integer", "minimum": 1, "maximum": 5},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
    },
    "required": ["ok", "level", "color", "tags"],
    "additionalProperties": False,
}


def regex(pattern: str = CODE, **kwargs: object) -> SamplingParams:
    return SamplingParams(max_tokens=64, seed=5, structured=StructuredOutput("regex", pattern), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def llm(tiny_llama_dir: Path) -> LLM:
    return LLM(str(tiny_llama_dir), num_kv_blocks=256, block_size=8)


def test_regex_output_matches_and_free_rows_are_untouched(llm: LLM) -> None:
    free = SamplingParams(temperature=1.0, max_tokens=12, seed=9, ignore_eos=True)
    alone = llm.generate(PROMPT, free)[0]
    outs = llm.generate([PROMPT, PROMPT, "hello"], [regex(), free, regex(temperature=0)])
    for out in (outs[0], outs[2]):
        assert re.fullmatch(CODE, out.text), out.text
        assert out.finish_reason == "stop"
    assert outs[1].token_ids == alone.token_ids  # the masks of its neighbours did not touch it


def test_json_schema_with_n_samples_all_validate(llm: LLM) -> None:
    params = SamplingParams(
        n=4,
        temperature=1.0,
        max_tokens=128,
        seed=1,
        structured=StructuredOutput("json_schema", json.dumps(SCHEMA)),
    )
    out = llm.generate(PROMPT, params)[0]
    assert len(out.outputs) == 4
    texts = [c.text for c in out.outputs]
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(texts)) > 1  # each sample has its own matcher and generator


def test_json_object_is_an_object(llm: LLM) -> None:
    # a random model rarely closes free strings: bound the grammar to keys it can finish
    out = llm.generate(
        PROMPT, SamplingParams(max_tokens=48, temperature=0, structured=StructuredOutput("json_object"))
    )[0]
    if out.finish_reason == "stop":
        assert isinstance(json.loads(out.text), dict)
    else:
        assert out.finish_reason == "length" and out.text.startswith("{")


def test_preempted_sequences_keep_their_grammar_state(tiny_llama_dir: Path) -> None:
    small = LLM(str(tiny_llama_dir), num_kv_blocks=12, block_size=4, max_num_seqs=8)
    long_code = r"[a-z]{10}-[0-9]{10}"
    outs = small.generate([PROMPT] * 6, [regex(long_code, temperature=1.0)] * 6)
    assert small.engine.scheduler.num_preemptions > 0
    for out in outs:
        assert re.fullmatch(long_code, out.text), out.text


def test_stop_string_inside_constrained_output(llm: LLM) -> None:
    out = llm.generate(PROMPT, regex(r"abc-[0-9]{4}", stop=("-",)))[0]
    assert out.text == "abc" and out.finish_reason == "stop"


def test_logprobs_come_from_the_masked_distribution(llm: LLM) -> None:
    out = llm.generate(PROMPT, regex(r"[0-9]{4}", logprobs=5, temperature=0))[0]
    assert re.fullmatch(r"[0-9]{4}", out.text)
    tokenizer = llm.engine.tokenizer
    for entry in out.outputs[0].logprobs or ():
        for token_id, logprob in entry.items():
            if logprob > float("-inf"):
                assert re.fullmatch(r"[0-9]+", tokenizer.decode([token_id])), tokenizer.decode([token_id])


def test_bad_grammars_are_value_errors_naming_the_problem(llm: LLM) -> None:
    bad = {"type": "object", "dependentSchemas": {"a": {}}}
    with pytest.raises(GrammarError, match="dependentSchemas"):
        llm.generate(PROMPT, SamplingParams(structured=StructuredOutput("json_schema", json.dumps(bad))))
    with pytest.raises(GrammarError, match="regex"):
        llm.generate(PROMPT, regex("(unclosed"))
    assert not llm.engine.has_unfinished_requests()


def test_structured_rejects_min_tokens_and_ignore_eos() -> None:
    with pytest.raises(ValueError, match="min_tokens and ignore_eos"):
        SamplingParams(min_tokens=3, structured=StructuredOutput("json_object"))


def test_grammars_are_cached_by_text(llm: LLM) -> None:
    compiler = llm.engine.grammars
    spec = StructuredOutput("regex", r"x[0-9]{2}")
    before = compiler.hits
    first = compiler.compile(spec)
    assert compiler.compile(spec) is first and compiler.hits == before + 1


@pytest.mark.parametrize("wrap", [lambda s: {"items": s}, lambda s: {"anyOf": [s]}, lambda s: {"const": [s]}])
def test_schemas_nested_past_the_limit_are_grammar_errors(wrap: Any) -> None:
    from shoal.engine.structured.schema_limits import check_schema

    schema: Any = {}
    for _ in range(3000):  # past Python's recursion limit too: still a clean error
        schema = wrap(schema)
    with pytest.raises(GrammarError, match="nests deeper than 32"):
        check_schema(schema)
