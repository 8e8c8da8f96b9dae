"""Tiny random HF checkpoints for engine tests, built with transformers (no hub access).

Every checkpoint carries the real SmolLM2 tokenizer (vocab 49152, ChatML template), extracted
once per process from the bundled GGUF, so prompts tokenize realistically.

Variants (``build_tiny_checkpoint(arch, ...)``):

- ``llama``: llama3 rope scaling (original context 64, so it matters), untied lm_head.
- ``llama_tied``: tied embeddings and plain rope, shaped like SmolLM2.
- ``qwen2``: qkv bias, tied embeddings.
- ``qwen3``: per-head q/k RMSNorm, explicit head_dim (32) != hidden / heads.

Norm weights and biases are randomised too (HF would init them to 1 / 0), so a mix-up in
loading them cannot hide.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

VOCAB_SIZE = 49152
BOS_ID = 1  # <|im_start|>
EOS_ID = 2  # <|im_end|>
ARCHS = ("llama", "llama_tied", "qwen2", "qwen3")

_tokenizer_cache: dict[str, Any] = {}


def smollm2_tokenizer_files() -> dict[str, str]:
    """``{filename: text}`` of tokenizer.json + tokenizer_config.json for the bundled SmolLM2."""
    if "files" not in _tokenizer_cache:
        from shoal.engine.bundled import bundled_model_path
        from shoal.engine.loader.gguf_loader import open_gguf, read_metadata
        from shoal.engine.tokenizer import Tokenizer

        reader = open_gguf(bundled_model_path())
        meta = {k: v for k, v in read_metadata(reader).items() if k.startswith("tokenizer.")}
        tok = Tokenizer.from_gguf_metadata(meta)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|im_end|>",
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 8192,
            "chat_template": tok.chat_template,
        }
        _tokenizer_cache["files"] = {
            "tokenizer.json": tok.backend.to_str(),
            "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False),
        }
    return dict(_tokenizer_cache["files"])


def write_smollm2_tokenizer(out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in smollm2_tokenizer_files().items():
        (out / name).write_text(text, encoding="utf-8")


def _rope(theta: float) -> Any:
    return {"rope_type": "default", "rope_theta": theta}


def tiny_hf_config(arch: str) -> Any:
    """The transformers config object of one tiny variant."""
    import transformers

    common: dict[str, Any] = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
        "initializer_range": 0.1,
    }
    if arch == "llama":
        return transformers.LlamaConfig(
            **common,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
    if arch == "llama_tied":
        return transformers.LlamaConfig(**common, tie_word_embeddings=True, rope_parameters=_rope(100000.0))
    if arch == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=True, rope_parameters=_rope(1e6))
    if arch == "qwen3":
        return transformers.Qwen3Config(
            **common, head_dim=32, tie_word_embeddings=False, rope_parameters=_rope(1e6)
        )
    raise ValueError(f"unknown tiny arch {arch!r}; choose from {ARCHS}")


def build_tiny_checkpoint(arch: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Create a random fp32 ``arch`` checkpoint in ``out_dir`` (safetensors + tokenizer) and return it."""
    import torch
    import transformers

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    config = tiny_hf_config(arch)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
            elif name.endswith(".bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    write_smollm2_tokenizer(out)
    return out


def load_hf_reference(path: str | Path) -> Any:
    """The transformers model of a tiny checkpoint (fp32, eval, eager attention)."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


_GGUF_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _smollm2_tokenizer_metadata() -> dict[str, Any]:
    if "meta" not in _tokenizer_cache:
        from shoal.engine.bundled import bundled_model_path
        from shoal.engine.loader.gguf_loader import open_gguf, read_metadata

        meta = read_metadata(open_gguf(bundled_model_path()))
        _tokenizer_cache["meta"] = {k: v for k, v in meta.items() if k.startswith("tokenizer.")}
    return dict(_tokenizer_cache["meta"])


def write_tiny_gguf(hf_dir: str | Path, out_path: str | Path, qtype: str = "F32", arch: str | None = None) -> Path:
    """Convert a tiny HF checkpoint to GGUF the way llama.cpp does (incl. its Q/K row permutation
    for the llama architecture), with 2-D weights stored as ``qtype`` (F32, F16, Q8_0, Q4_0, Q4_1)
    and the SmolLM2 tokenizer metadata. ``arch`` overrides ``general.architecture`` (error tests).
    """
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    hf_dir = Path(hf_dir)
    cfg = json.loads((hf_dir / "config.json").read_text())
    model_type = cfg["model_type"]
    gguf_arch = arch or model_type
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))

    writer = gguf.GGUFWriter(str(out_path), gguf_arch)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_vocab_size(cfg["vocab_size"])
    tok = _smollm2_tokenizer_metadata()
    writer.add_tokenizer_model(tok["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(tok["tokenizer.ggml.pre"])
    writer.add_token_list(tok["tokenizer.ggml.tokens"])
    writer.add_token_types(tok["tokenizer.ggml.token_type"])
    writer.add_token_merges(tok["tokenizer.ggml.merges"])
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tok["tokenizer.chat_template"])

    def permute(w: Any, n_head: int) -> Any:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    rope = {**(cfg.get("rope_scaling") or {}), **(cfg.get("rope_parameters") or {})}
    if rope.get("rope_type") == "llama3":
        # llama.cpp stores Llama 3 rope scaling as per-frequency divisors in a `rope_freqs` tensor.
        writer.add_tensor("rope_freqs.weight", _llama3_freq_factors(rope, head_dim))

    weights = load_file(str(hf_dir / "model.safetensors"))
    quant = gguf.GGMLQuantizationType[qtype]
    for name, w in weights.items():
        w = w.astype(np.float32)
        if model_type == "llama" and name.endswith("q_proj.weight"):
            w = permute(w, heads)
        elif model_type == "llama" and name.endswith("k_proj.weight"):
            w = permute(w, kv_heads)
        parts = name.split(".")
        if parts[:2] == ["model", "layers"]:
            gname = f"blk.{parts[2]}.{_GGUF_LAYER['.'.join(parts[3:-1])]}.{parts[-1]}"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
        if w.ndim == 2 and quant != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gname, gguf.quants.quantize(w, quant), raw_dtype=quant)
        else:
            writer.add_tensor(gname, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out_path)


def _llama3_freq_factors(rope: dict[str, Any], head_dim: int) -> Any:
    import math

    import numpy as np

    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_ctx = rope["original_max_position_embeddings"]
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * rope["rope_theta"] ** (i / head_dim)
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)
