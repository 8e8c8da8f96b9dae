"""Acceptance: bad input gives a clear error and leaves the KV pool all free."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shoal.engine import LLM, SamplingParams
from shoal.engine.errors import PromptTooLongError
from shoal.engine.loader.errors import ModelLoadError


@pytest.fixture(scope="module")
def llm(tiny_llama_dir: Path) -> LLM:
    return LLM(str(tiny_llama_dir), num_kv_blocks=64, max_model_len=128)


def assert_all_free(llm: LLM) -> None:
    bm = llm.engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -0.1}, "temperature"),
        ({"n": 0}, "n must"),
        ({"top_k": -5}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"logprobs": 100}, "logprobs"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_invalid_sampling_params(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_empty_prompt(llm: LLM) -> None:
    with pytest.raises(ValueError, match="empty"):
        llm.generate("", SamplingParams())
    with pytest.raises(ValueError, match="at least one"):
        llm.generate(prompt_token_ids=[[]], params=SamplingParams())
    assert_all_free(llm)


def test_prompt_too_long_names_both_lengths(llm: LLM) -> None:
    with pytest.raises(PromptTooLongError) as info:
        llm.generate(prompt_token_ids=[list(range(10, 210))], params=SamplingParams())
    assert info.value.num_tokens == 200 and info.value.max_model_len == 128
    assert "200" in str(info.value) and "128" in str(info.value)
    assert_all_free(llm)


def test_bad_request_in_a_batch_queues_nothing(llm: LLM) -> None:
    with pytest.raises(ValueError):
        llm.generate(prompt_token_ids=[[5, 6, 7], list(range(300))], params=SamplingParams())
    assert_all_free(llm)
    assert llm.generate("still works", SamplingParams(max_tokens=2))[0].finish_reason is not None


def test_token_id_out_of_vocab(llm: LLM) -> None:
    with pytest.raises(ValueError, match="token ids"):
        llm.generate(prompt_token_ids=[[1, 10**7]], params=SamplingParams())
    assert_all_free(llm)


def test_unknown_path() -> None:
    with pytest.raises(ModelLoadError, match="does-not-exist"):
        LLM("/tmp/does-not-exist-model")


def test_unknown_architecture(tiny_llama_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "weird"
    broken.mkdir()
    for f in tiny_llama_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="MambaForCausalLM"):
        LLM(str(broken))


def test_corrupt_safetensors(tiny_llama_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "corrupt"
    broken.mkdir()
    for f in tiny_llama_dir.iterdir():
        data = f.read_bytes()
        if f.suffix == ".safetensors":
            data = data[: len(data) // 3]
        (broken / f.name).write_bytes(data)
    with pytest.raises(ModelLoadError, match="safetensors"):
        LLM(str(broken))


def test_corrupt_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"GGUF|gguf"):
        LLM(str(bad))


def test_unknown_engine_argument() -> None:
    with pytest.raises(TypeError, match="block_sizee"):
        LLM("x", block_sizee=3)
