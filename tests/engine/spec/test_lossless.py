"""Acceptance: greedy output with speculation is token-identical to greedy without it.

On the parity prompts of test_engine_parity and random prompts, on several architectures,
with chunked prefill, under preemption (a small KV pool) and with n>1; also with a drafter
whose trees force non-first branches and rejections at every depth.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from shoal.engine import LLM, SamplingParams
from shoal.engine.sequence import Sequence
from shoal.engine.spec import config as spec_config
from shoal.engine.spec.config import SpeculationConfig
from shoal.engine.spec.drafter import Drafter, register_drafter
from shoal.engine.spec.step_cost import StepCostModel
from shoal.engine.spec.token_tree import ROOT, DraftTree, TreeBuilder

ARCH_FIXTURES = ["tiny_llama_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"]
_WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
    "jumbo boxes of pizza near the old harbour and singing sailors count stars"
).split()
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
SPEC = SpeculationConfig(max_draft_tokens=8, max_depth=6, max_batch_size=64)


def parity_prompts() -> list[str]:
    """The prompts of test_engine_parity.make_prompts (2 to 61 words)."""
    lengths = [2, 37, 5, 61, 13, 24, 3, 48]
    return [" ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(k)) for i, k in enumerate(lengths)]


def repetitive_prompts() -> list[str]:
    """Prompts that repeat themselves, so the trie drafts and many drafts are accepted."""
    return [" ".join(_WORDS[i : i + 5]) * 4 for i in range(0, 20, 4)]


# A test drafter that knows the greedy continuation and hides it behind wrong branches: a wrong
# token first at every level, the true one second, and a wrong node under the third true one, so
# verification follows non-first branches (moving accepted KV into place) and rejects at every depth.
EXPECTED: dict[tuple[int, ...], list[int]] = {}
"""prompt token ids -> the greedy output the model gives without speculation (filled by tests)."""


class OracleDrafter(Drafter):
    def __init__(self, config: SpeculationConfig) -> None:
        self.config = config

    def propose(self, seq: Sequence, budget: int, max_depth: int) -> DraftTree | None:
        prompt = tuple(seq.token_ids[: seq.num_prompt_tokens])
        truth = EXPECTED.get(prompt, [])[seq.num_output_tokens :]
        builder = TreeBuilder(budget, max_depth)
        parent = ROOT
        for depth, token in enumerate(truth[:max_depth]):
            builder.child(parent, (token + 1 + depth) % 1000)  # a wrong sibling first
            node = builder.child(parent, token)
            if node is None:
                break
            if depth == 2:  # stop being right here: the next level is wrong
                builder.child(node, (token + 7) % 1000)
                break
            parent = node
        return builder.build()


register_drafter("oracle", OracleDrafter)


@pytest.fixture(autouse=True)
def free_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    """Extra query rows cost nothing here, so every draft with any expected acceptance is verified
    whole (on these tiny models measured step times would cut drafts short and test less)."""
    monkeypatch.setattr(StepCostModel, "relative", lambda self, rows, extra: 1.0)


@pytest.fixture(params=ARCH_FIXTURES)
def model_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def _outputs(llm: LLM, ids: list[list[int]], params: SamplingParams = GREEDY) -> list[list[list[int]]]:
    return [[list(o.token_ids) for o in r.outputs] for r in llm.generate(prompt_token_ids=ids, params=params)]


def _check_identical(model_dir: Path, prompts: list[str], **engine_args: object) -> LLM:
    plain = LLM(str(model_dir), num_kv_blocks=256)
    ids = [plain.tokenizer.encode(p) for p in prompts]
    expected = _outputs(plain, ids)
    spec = LLM(str(model_dir), **{"num_kv_blocks": 256, "speculation": SPEC, **engine_args})
    assert _outputs(spec, ids) == expected
    bm = spec.engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks, "a rejected draft leaked KV blocks"
    return spec


def test_parity_prompts_identical(model_dir: Path) -> None:
    spec = _check_identical(model_dir, parity_prompts() + repetitive_prompts())
    stats = spec.engine.speculator.stats  # type: ignore[union-attr]
    assert stats.num_drafts > 0 and stats.num_accepted_tokens > 0, "speculation never ran"


def test_random_prompts_identical(tiny_llama_dir: Path) -> None:
    rng = random.Random(14)
    prompts = []
    for _ in range(10):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(1, 40))]
        period = rng.randint(1, 6)
        prompts.append(" ".join(words[:period] * rng.randint(1, 6) + words[period:]))
    _check_identical(tiny_llama_dir, prompts, max_num_batched_tokens=rng.choice([16, 64]), block_size=4)


def test_identical_under_preemption(tiny_qwen2_dir: Path) -> None:
    spec = _check_identical(
        tiny_qwen2_dir, parity_prompts() + repetitive_prompts(), num_kv_blocks=20, block_size=8, max_num_batched_tokens=64
    )
    assert spec.engine.scheduler.num_preemptions > 0, "the KV pool should have been too small"


def test_n_samples_identical(tiny_llama_dir: Path) -> None:
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, n=3)
    plain = LLM(str(tiny_llama_dir), num_kv_blocks=256)
    ids = [plain.tokenizer.encode(p) for p in repetitive_prompts()[:3]]
    expected = _outputs(plain, ids, params)
    spec = LLM(str(tiny_llama_dir), num_kv_blocks=256, speculation=SPEC)
    assert _outputs(spec, ids, params) == expected


def test_tree_branches_and_rejections_identical(
    tiny_llama_tied_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The oracle drafter's true path is never the first branch: accepted KV must be moved into place."""
    monkeypatch.setattr(spec_config, "DRAFTER_NAMES", (*spec_config.DRAFTER_NAMES, "oracle"))
    plain = LLM(str(tiny_llama_tied_dir), num_kv_blocks=256)
    ids = [plain.tokenizer.encode(p) for p in parity_prompts()]
    expected = _outputs(plain, ids)
    for prompt, outs in zip(ids, expected, strict=True):
        EXPECTED[tuple(prompt)] = outs[0]
    spec = LLM(
        str(tiny_llama_tied_dir), num_kv_blocks=256, block_size=4,
        speculation=SpeculationConfig(method="oracle", max_draft_tokens=8, max_depth=4, max_batch_size=64),
    )  # fmt: skip
    assert _outputs(spec, ids) == expected
    stats = spec.engine.speculator.stats  # type: ignore[union-attr]
    assert stats.accepted_per_pos[:3] and min(stats.accepted_per_pos[:3]) > 0
    assert len(stats.accepted_per_pos) == 3, "the oracle's fourth level is always wrong"


def test_logprobs_and_stop_strings_keep_working(tiny_llama_dir: Path) -> None:
    prompts = repetitive_prompts()[:3]
    plain = LLM(str(tiny_llama_dir), num_kv_blocks=256)
    ids = [plain.tokenizer.encode(p) for p in prompts]
    free = plain.generate(prompt_token_ids=ids, params=GREEDY)
    stop = plain.tokenizer.decode(list(free[0].token_ids[5:7]))
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=2, stop=[stop])
    expected = plain.generate(prompt_token_ids=ids, params=params)
    spec = LLM(str(tiny_llama_dir), num_kv_blocks=256, speculation=SPEC)
    got = spec.generate(prompt_token_ids=ids, params=params)
    for want, have in zip(expected, got, strict=True):
        assert have.text == want.text and have.token_ids == want.token_ids
        assert have.finish_reason == want.finish_reason
        want_lp, have_lp = want.outputs[0].logprobs, have.outputs[0].logprobs
        assert want_lp is not None and have_lp is not None and len(want_lp) == len(have_lp)
        for a, b in zip(want_lp, have_lp, strict=True):
            assert a.keys() == b.keys()
            assert all(abs(a[t] - b[t]) < 1e-4 for t in a)
    assert spec.engine.speculator.stats.num_accepted_tokens > 0  # type: ignore[union-attr]
