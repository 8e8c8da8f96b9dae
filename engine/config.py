"""Engine settings (one frozen dataclass; the CLI and the CRD map onto these fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal.engine.machine_defaults import default_step_budget
from shoal.engine.spec.config import SpeculationConfig


@dataclass(frozen=True)
class EngineConfig:
    """Settings of one engine replica."""

    model: str
    """An HF folder (config.json + *.safetensors + tokenizer.json) or a .gguf file."""
    served_model_name: str | None = None
    """Name in the OpenAI API; defaults to the model folder or file name."""
    device: str = "auto"
    """``cpu``, ``cuda`` or ``auto`` (cuda when available)."""
    dtype: str = "auto"
    """``float32``, ``float16``, ``bfloat16`` or ``auto`` (fp32 on CPU, bf16 on GPU)."""
    block_size: int = 16
    """Tokens per KV block."""
    num_kv_blocks: int | None = None
    """KV pool size in blocks; None derives it from ``kv_cache_memory_gb``."""
    kv_cache_memory_gb: float | None = None
    """Memory for the KV pool when ``num_kv_blocks`` is not given; None sizes it from the machine
    (CPU: 10% of the available RAM, at most 2 GiB, as the pool is zeroed and so resident; CUDA:
    85% of the memory free after the model loads; see :mod:`~shoal.engine.machine_defaults`)."""
    max_num_batched_tokens: int = field(default_factory=default_step_budget)
    """Token budget of one step (Dynamic SplitFuse): decodes first, prompt chunks fill the rest.
    Default: 1024 per CPU core, between 1024 and 8192."""
    max_num_seqs: int = 128
    """Most sequences running at once."""
    max_model_len: int | None = None
    """Longest prompt + output; defaults to the model's context length."""
    enable_prefix_caching: bool = True
    kernels: str | None = None
    """Kernel backend name (``torch``/``triton``); None picks by device (env ``SHOAL_KERNELS`` overrides)."""
    seed: int = 0
    """Seed of the engine's default generator (requests without their own seed)."""
    num_threads: int | None = None
    """torch intra-op threads on CPU; None keeps torch's default."""
    weights: str = "auto"
    """How GGUF Q4_1/Q8_0 weights are computed: ``native`` (from their quantized blocks with the
    CPU kernels; CPU + float32 only), ``dequantized`` (fp32 copies: the parity reference) or
    ``auto`` (native when the model, device and CPU allow it, else dequantized)."""
    batch_matmul: str = "float32"
    """GEMMs of more than ``KERNEL_MAX_ROWS`` (48) rows (prefill chunks, large decode batches) when
    weights are native run oneDNN on weights packed at load, in place of the fp32 copies:
    ``float32`` (fp32 numerics; 2-4x torch's MKL ``linear`` on AMD CPUs) or ``bfloat16`` (inputs
    and outputs rounded to bf16, fp32 accumulation; half the weight memory and faster prefill,
    but greedy outputs leave fp32's within a few tokens; needs AVX512_BF16 or AMX).
    ``weights=dequantized`` is torch's fp32 ``linear`` throughout (the parity reference)."""
    max_pinned_blocks_per_tenant: int | None = None
    """KV blocks one tenant's program pins may hold; None = a quarter of the pool. Past it, the
    tenant's oldest pins are released first."""
    max_retention_s: float = 600.0
    """Cap on a program's requested retention (seconds)."""
    speculation: SpeculationConfig | None = None
    """Lossless speculative decoding (drafts verified in the same forward pass); None = off."""

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 1, got {self.block_size}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.kv_cache_memory_gb is not None and self.kv_cache_memory_gb <= 0:
            raise ValueError(f"kv_cache_memory_gb must be > 0, got {self.kv_cache_memory_gb}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        if self.max_pinned_blocks_per_tenant is not None and self.max_pinned_blocks_per_tenant < 0:
            raise ValueError(f"max_pinned_blocks_per_tenant must be >= 0, got {self.max_pinned_blocks_per_tenant}")
        if not 0 <= self.max_retention_s <= 7 * 86400:
            raise ValueError(f"max_retention_s must be in [0, 604800], got {self.max_retention_s}")
        if self.weights not in ("auto", "native", "dequantized"):
            raise ValueError(f"weights must be auto, native or dequantized, got {self.weights!r}")
        if self.batch_matmul not in ("float32", "bfloat16"):
            raise ValueError(f"batch_matmul must be float32 or bfloat16, got {self.batch_matmul!r}")
        if self.batch_matmul == "bfloat16" and self.weights == "dequantized":
            raise ValueError("batch_matmul=bfloat16 needs native weights; weights=dequantized is fp32 throughout")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
