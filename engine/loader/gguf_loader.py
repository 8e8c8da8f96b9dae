"""GGUF files: config and tokenizer from the metadata, weights dequantized to the engine dtype.

The file is parsed by :mod:`~shoal.engine.loader.gguf_file` (fast header parse, memmapped data).
Common block formats (F32/F16/BF16/Q8_0/Q4_0/Q4_1) are dequantized with vectorised torch ops
(several times faster than ``gguf.quants.dequantize`` in numpy, and bit-identical); other formats fall
back to the ``gguf`` package.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shoal.engine.kernels.cpu.quant_linear import BLOCK_BYTES, QuantizedWeight
from shoal.engine.loader.errors import ModelLoadError
from shoal.engine.loader.gguf_file import GGUFFile, GGUFTensor, read_gguf
from shoal.engine.model_config import ModelConfig

_ARCHITECTURES = ("llama", "qwen2", "qwen3")

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}


def open_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file; a damaged file raises :class:`ModelLoadError`."""
    return read_gguf(path)


def read_metadata(gguf_file: GGUFFile) -> dict[str, Any]:
    """All key/value metadata as plain Python values (strings, numbers, lists)."""
    return dict(gguf_file.metadata)


def config_from_metadata(
    meta: dict[str, Any], tensor_names: set[str], rope_freqs: list[float] | None = None
) -> ModelConfig:
    """Map GGUF metadata (``{arch}.block_count`` ...) onto :class:`ModelConfig`.

    ``rope_freqs``: the values of a ``rope_freqs.weight`` tensor, when the file has one.
    """
    arch = meta.get("general.architecture")
    if arch not in _ARCHITECTURES:
        raise ModelLoadError(
            f"unsupported GGUF architecture {arch!r}; supported: {', '.join(_ARCHITECTURES)}"
        )

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelLoadError(f"GGUF metadata lacks {arch}.{key}")
        return value

    hidden = int(get("embedding_length"))
    num_heads = int(get("attention.head_count"))
    num_kv_heads = int(get("attention.head_count_kv", num_heads))
    head_dim = int(meta.get(f"{arch}.attention.key_length") or hidden // num_heads)
    tokens = meta.get("tokenizer.ggml.tokens") or []
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    scaling_type = meta.get(f"{arch}.rope.scaling.type")
    if scaling_type == "linear":
        rope_scaling = (("factor", float(get("rope.scaling.factor"))), ("rope_type", "linear"))
    elif scaling_type not in (None, "none"):
        raise ModelLoadError(f"unsupported GGUF rope scaling {scaling_type!r}")
    if rope_freqs is not None:
        # llama.cpp bakes Llama 3.x rope scaling into per-frequency divisors instead of metadata.
        rope_scaling = (("freq_factors", tuple(float(f) for f in rope_freqs)), ("rope_type", "freq_factors"))
    eos = meta.get("tokenizer.ggml.eos_token_id")
    eot = meta.get("tokenizer.ggml.eot_token_id")
    bos = meta.get("tokenizer.ggml.bos_token_id")
    return ModelConfig(
        architecture=str(arch),
        vocab_size=int(meta.get(f"{arch}.vocab_size") or len(tokens)),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=rope_scaling,
        max_position_embeddings=int(get("context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        qk_norm=arch == "qwen3",
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=tuple(dict.fromkeys(int(i) for i in (eos, eot) if i is not None)),
    )


def hf_name(gguf_name: str) -> str | None:
    """The HF parameter name of a GGUF tensor, or None for tensors the model does not use."""
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[parts[0]]}.{parts[1]}"
    return None


def iter_weights(gguf_file: GGUFFile, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """``(hf_name, fp32 tensor)`` for every model tensor, Q/K rows un-permuted for llama.

    llama.cpp's converter interleaves each head's rotary halves in attn_q/attn_k of the llama
    architecture (GGML's rope pairs adjacent elements); HF rotates halves, so undo it.
    """
    for tensor in gguf_file.tensors:
        if tensor.name == "rope_freqs.weight":
            continue  # folded into config.rope_scaling
        name = hf_name(tensor.name)
        if name is None:
            raise ModelLoadError(f"unexpected tensor {tensor.name!r} in the GGUF file")
        try:
            weight = dequantize(tensor)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot dequantize GGUF tensor {tensor.name!r}: {exc}") from exc
        if config.architecture == "llama":
            if name.endswith("self_attn.q_proj.weight") or name.endswith("self_attn.q_proj.bias"):
                weight = _unpermute(weight, config.num_heads)
            elif name.endswith("self_attn.k_proj.weight") or name.endswith("self_attn.k_proj.bias"):
                weight = _unpermute(weight, config.num_kv_heads)
        yield name, weight


def quantized_weights(gguf_file: GGUFFile, config: ModelConfig) -> dict[str, QuantizedWeight]:
    """``hf_name -> QuantizedWeight`` for the 2-D Q4_1/Q8_0 tensors, kept as their raw blocks.

    Rows are un-permuted like :func:`iter_weights` (a row of blocks moves as a whole), so the
    blocks hold exactly the weights the fp32 path dequantizes.
    """
    from gguf import GGMLQuantizationType

    out: dict[str, QuantizedWeight] = {}
    for tensor in gguf_file.tensors:
        qtype = GGMLQuantizationType(tensor.ggml_type).name
        name = hf_name(tensor.name)
        if name is None or qtype not in BLOCK_BYTES or len(tensor.shape) != 2:
            continue
        rows, cols = tensor.shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # read-only memmap: we never write to it
            blocks = torch.from_numpy(tensor.data).reshape(rows, -1)
        if config.architecture == "llama":
            if name.endswith("self_attn.q_proj.weight"):
                blocks = _unpermute(blocks, config.num_heads)
            elif name.endswith("self_attn.k_proj.weight"):
                blocks = _unpermute(blocks, config.num_kv_heads)
        out[name] = QuantizedWeight(qtype, blocks.contiguous().clone(), cols)
    return out


def _unpermute(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(num_heads, rows // num_heads // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


def dequantize(tensor: GGUFTensor) -> torch.Tensor:
    """One GGUF tensor as an fp32 torch tensor of its logical (HF-order) shape."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    qtype = GGMLQuantizationType(tensor.ggml_type)
    shape = tensor.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only memmap: we never write to it
        raw = torch.from_numpy(tensor.data)
    if qtype == GGMLQuantizationType.F32:
        return raw.view(torch.float32).reshape(shape).clone()
    if qtype == GGMLQuantizationType.F16:
        return raw.view(torch.float16).reshape(shape).float()
    if qtype == GGMLQuantizationType.BF16:
        return raw.view(torch.bfloat16).reshape(shape).float()
    fast = _FAST.get(qtype.name)
    if fast is not None:
        return fast(raw.reshape(-1, GGML_QUANT_SIZES[qtype][1])).reshape(shape)
    rows = tensor.data.reshape(*shape[:-1], -1)
    return torch.from_numpy(np.ascontiguousarray(quants.dequantize(rows, qtype), dtype=np.float32)).reshape(shape)


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    # Low nibbles are elements 0..15 of the block, high nibbles 16..31.
    return torch.cat((qs & 0x0F, qs >> 4), dim=-1).float()


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks, 0) * blocks[:, 2:].contiguous().view(torch.int8).float()


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks, 0) * (_nibbles(blocks[:, 2:]) - 8.0)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks, 0) * _nibbles(blocks[:, 4:]) + _f16(blocks, 2)


_FAST = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1}


def load_gguf(
    path: Path,
    dtype: torch.dtype,
    device: torch.device | str,
    native_weights: bool = False,
    require_native: bool = False,
) -> tuple[Any, ModelConfig, Any]:
    """(model, config, tokenizer) from one GGUF file.

    ``native_weights``: linear layers whose weights are Q4_1/Q8_0 in the file compute from those
    blocks (CPU kernels) instead of fp32 copies; see ``LlamaForCausalLM.use_quantized_weights``.
    ``require_native``: a file without such weights is an error instead of staying fp32.
    """
    from shoal.engine.models.llama import LlamaForCausalLM
    from shoal.engine.tokenizer import Tokenizer

    gguf_file = open_gguf(path)
    meta = gguf_file.metadata
    by_name = {t.name: t for t in gguf_file.tensors}
    rope_freqs = by_name.get("rope_freqs.weight")
    config = config_from_metadata(
        meta, set(by_name), None if rope_freqs is None else dequantize(rope_freqs).flatten().tolist()
    )
    try:
        tokenizer = Tokenizer.from_gguf_metadata(meta)
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"cannot build the tokenizer from {path.name}: {exc}") from exc
    model = LlamaForCausalLM(config, dtype=dtype, device=device)
    model.load_weights(iter_weights(gguf_file, config))
    if native_weights:
        switched = model.use_quantized_weights(quantized_weights(gguf_file, config))
        if switched == 0 and require_native:
            raise ModelLoadError(f"weights=native: {path.name} has no Q4_1/Q8_0 linear weights to compute from")
    model.eval()
    return model, config, tokenizer
