"""Our model over the paged KV cache == transformers, logit for logit (fp32, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shoal.engine.loader import load_model
from support.paged_runner import PagedRunner
from support.tiny_models import load_hf_reference

TINY = ["tiny_llama_dir", "tiny_llama_tied_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"]
ATOL = 1e-4

PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence, please."}]


def _hf_logits(ref: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return ref(torch.tensor([ids])).logits[0].float()


@pytest.fixture(scope="module", params=TINY)
def pair(request: pytest.FixtureRequest) -> tuple[object, torch.nn.Module]:
    path: Path = request.getfixturevalue(request.param)
    return load_model(str(path), torch.float32, "cpu"), load_hf_reference(path)


def test_prefill_then_decode_matches_hf(pair: tuple) -> None:
    loaded, ref = pair
    ids = loaded.tokenizer.encode_chat(PROMPT)
    runner = PagedRunner(loaded.model)
    ours = runner.step({0: ids})
    torch.testing.assert_close(ours, _hf_logits(ref, ids), atol=ATOL, rtol=0)
    seq = list(ids)
    for _ in range(4):
        seq.append(int(ours[-1].argmax()))
        ours = runner.step({0: seq[-1:]})
        torch.testing.assert_close(ours[0], _hf_logits(ref, seq)[-1], atol=ATOL, rtol=0)


def test_packed_chunked_prefill_and_decode_match_hf(pair: tuple) -> None:
    """One step mixing a prefill chunk, a decode and a fresh short prompt (Dynamic SplitFuse)."""
    loaded, ref = pair
    tok = loaded.tokenizer
    a = tok.encode("The quick brown fox jumps over the lazy dog, and then it runs far away into the woods.")
    b = tok.encode("def add(x, y):\n    return x + y\n")
    c = tok.encode("Bonjour")
    runner = PagedRunner(loaded.model, max_seqs=3)
    half = len(a) // 2
    runner.step({0: a[:half], 1: b})
    out = runner.step({0: a[half:], 1: [7], 2: c})
    n0, n1 = len(a) - half, 1
    torch.testing.assert_close(out[:n0], _hf_logits(ref, a)[half:], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[n0], _hf_logits(ref, [*b, 7])[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[n0 + n1 :], _hf_logits(ref, c), atol=ATOL, rtol=0)


def test_config_features(tiny_llama_dir: Path, tiny_qwen2_dir: Path, tiny_qwen3_dir: Path) -> None:
    """The tiny checkpoints really exercise the features the parity tests claim to cover."""
    import json

    from shoal.engine.model_config import ModelConfig

    def cfg(p: Path) -> ModelConfig:
        return ModelConfig.from_hf_dict(json.loads((p / "config.json").read_text()))

    llama, qwen2, qwen3 = cfg(tiny_llama_dir), cfg(tiny_qwen2_dir), cfg(tiny_qwen3_dir)
    assert llama.rope_scaling_dict()["rope_type"] == "llama3" and not llama.tie_word_embeddings
    assert qwen2.attention_bias and qwen2.architecture == "qwen2"
    assert qwen3.qk_norm and qwen3.head_dim * qwen3.num_heads != qwen3.hidden_size


def test_long_positions_use_llama3_scaling(tiny_llama_dir: Path) -> None:
    """Past the original context (64) the scaled rope must still match transformers."""
    loaded = load_model(str(tiny_llama_dir), torch.float32, "cpu")
    ref = load_hf_reference(tiny_llama_dir)
    ids = [(i * 7919) % 40000 + 100 for i in range(150)]
    ours = PagedRunner(loaded.model).step({0: ids})
    torch.testing.assert_close(ours[-20:], _hf_logits(ref, ids)[-20:], atol=ATOL, rtol=0)


def test_random_init_on_meta_then_device() -> None:
    from shoal.engine.model_config import ModelConfig
    from shoal.engine.models import LlamaForCausalLM

    cfg = ModelConfig(
        architecture="qwen3", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None,
        max_position_embeddings=64, tie_word_embeddings=True, attention_bias=False, qk_norm=True,
        bos_token_id=None, eos_token_ids=(1,),
    )
    meta = LlamaForCausalLM(cfg, device="meta")
    assert next(meta.parameters()).device.type == "meta"
    model = meta.to_empty(device="cpu").random_init_(std=0.02, seed=1)
    logits = PagedRunner(model).step({0: [1, 2, 3]})
    assert logits.shape == (3, 128) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert model.cos_sin_cache.dtype == torch.float32 and model.cos_sin_cache.shape == (64, 8)


def test_bf16_forward_runs(tiny_qwen2_dir: Path) -> None:
    loaded = load_model(str(tiny_qwen2_dir), torch.bfloat16, "cpu")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    logits = PagedRunner(loaded.model).step({0: loaded.tokenizer.encode("hello there")})
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.slow
def test_bundled_gguf_matches_transformers(bundled_model_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    loaded = load_model(str(bundled_model_path), torch.float32, "cpu")
    ref = AutoModelForCausalLM.from_pretrained(
        str(bundled_model_path.parent), gguf_file=bundled_model_path.name, dtype=torch.float32
    ).eval()
    ids = loaded.tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    runner = PagedRunner(loaded.model)
    ours = runner.step({0: ids})
    torch.testing.assert_close(ours, _hf_logits(ref, ids), atol=1e-3, rtol=0)
    seq = list(ids)
    for _ in range(8):
        seq.append(int(ours[-1].argmax()))
        ours = runner.step({0: seq[-1:]})
    torch.testing.assert_close(ours[0], _hf_logits(ref, seq)[-1], atol=1e-3, rtol=0)
    assert "Paris" in loaded.tokenizer.decode(seq[len(ids) :])
