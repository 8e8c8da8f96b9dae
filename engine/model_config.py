"""Architecture hyper-parameters of a served model, mapped from HF ``config.json`` or GGUF metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.engine.loader.errors import ModelLoadError

# HF ``architectures[0]`` -> our architecture name.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
_ROPE_TYPES = ("default", "linear", "llama3", "freq_factors")  # freq_factors: from GGUF rope_freqs


@dataclass(frozen=True)
class ModelConfig:
    """What :class:`~shoal.engine.models.llama.LlamaForCausalLM` needs to build itself.

    ``rope_scaling`` is a sorted tuple of ``(key, value)`` pairs (hashable); read it with
    :meth:`rope_scaling_dict`. It is None for plain rotary embeddings.
    """

    architecture: str  # "llama" | "qwen2" | "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: tuple[tuple[str, Any], ...] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.architecture not in _MODEL_TYPES.values():
            raise ModelLoadError(f"unknown architecture {self.architecture!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if int(getattr(self, name)) < 1:
                raise ModelLoadError(f"config field {name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ModelLoadError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        rope_type = self.rope_scaling_dict().get("rope_type", "default")
        if rope_type not in _ROPE_TYPES:
            raise ModelLoadError(f"unsupported rope scaling {rope_type!r}; supported: {', '.join(_ROPE_TYPES)}")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def rope_scaling_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling) if self.rope_scaling else {}

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Map an HF ``config.json`` dict (transformers 4.x or 5.x field names)."""
        archs = d.get("architectures") or []
        arch_name = archs[0] if archs else None
        if arch_name is not None:
            if arch_name not in SUPPORTED_ARCHITECTURES:
                raise ModelLoadError(
                    f"unsupported architecture {arch_name!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
                )
            architecture = SUPPORTED_ARCHITECTURES[arch_name]
        else:
            model_type = d.get("model_type")
            if model_type not in _MODEL_TYPES:
                raise ModelLoadError(
                    f"unsupported model_type {model_type!r} (config.json has no 'architectures'); "
                    f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
                )
            architecture = _MODEL_TYPES[model_type]
        try:
            hidden = int(d["hidden_size"])
            num_heads = int(d["num_attention_heads"])
            rope_theta, rope_scaling = _rope_from_hf(d)
            eos = d.get("eos_token_id")
            eos_ids = tuple(int(e) for e in eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
            return cls(
                architecture=architecture,
                vocab_size=int(d["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(d["intermediate_size"]),
                num_layers=int(d["num_hidden_layers"]),
                num_heads=num_heads,
                num_kv_heads=int(d.get("num_key_value_heads") or num_heads),
                head_dim=int(d.get("head_dim") or hidden // num_heads),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                rope_theta=rope_theta,
                rope_scaling=rope_scaling,
                max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                attention_bias=bool(d.get("attention_bias", architecture == "qwen2")),
                qk_norm=architecture == "qwen3",
                bos_token_id=None if d.get("bos_token_id") is None else int(d["bos_token_id"]),
                eos_token_ids=eos_ids,
            )
        except KeyError as exc:
            raise ModelLoadError(f"config.json lacks the required field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ModelLoadError):
                raise
            raise ModelLoadError(f"config.json has a malformed field: {exc}") from exc


def _rope_from_hf(d: dict[str, Any]) -> tuple[float, tuple[tuple[str, Any], ...] | None]:
    # transformers 5 folds theta and scaling into ``rope_parameters``; 4.x keeps them apart.
    params = d.get("rope_parameters") or {}
    scaling = dict(d.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
    merged = {k: v for k, v in {**params, **scaling}.items() if k != "rope_theta"}
    if "type" in merged and "rope_type" not in merged:
        merged["rope_type"] = merged.pop("type")
    merged.pop("type", None)
    if merged.get("rope_type", "default") == "default":
        return theta, None
    return theta, tuple(sorted(merged.items()))

