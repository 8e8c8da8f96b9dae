"""The speculation setting: CLI flags -> EngineConfig, metrics under vLLM's names."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from shoal.engine import LLM, SamplingParams
from shoal.engine.cli_args import add_engine_args, engine_config_from_args
from shoal.engine.server.metrics import ServerMetrics
from shoal.engine.spec.config import SpeculationConfig


def _parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    return parser.parse_args(["--model", "m", *flags])


def test_flags_build_the_speculation_config() -> None:
    assert engine_config_from_args(_parse()).speculation is None
    config = engine_config_from_args(
        _parse("--speculation", "trie", "--spec-max-draft-tokens", "4", "--spec-max-batch-size", "2",
               "--spec-global-trie-nodes", "0")
    )  # fmt: skip
    assert config.speculation == SpeculationConfig(max_draft_tokens=4, max_depth=4, max_batch_size=2, global_trie_nodes=0)
    with pytest.raises(ValueError, match="max_draft_tokens"):
        engine_config_from_args(_parse("--speculation", "trie", "--spec-max-draft-tokens", "0"))


def test_metrics_use_vllm_spec_decode_names(tiny_llama_dir: Path) -> None:
    llm = LLM(str(tiny_llama_dir), num_kv_blocks=64, speculation=SpeculationConfig())
    llm.generate("one two three one two three one two three", SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    stats = llm.engine.stats()
    assert stats.spec_num_drafts > 0
    body = ServerMetrics("m", llm.engine.stats).render().decode()
    for name in ("vllm:spec_decode_num_drafts_total", "vllm:spec_decode_num_draft_tokens_total",
                 "vllm:spec_decode_num_accepted_tokens_total", "vllm:spec_decode_num_accepted_tokens_per_pos_total",
                 "shoal:spec_decode_acceptance_rate", "shoal:spec_decode_mean_accepted_length"):  # fmt: skip
        assert f"\n{name}{{" in body, name
    assert f'vllm:spec_decode_num_drafts_total{{model_name="m"}} {float(stats.spec_num_drafts)}' in body
