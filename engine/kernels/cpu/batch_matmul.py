"""oneDNN GEMM on packed weights for the large row counts of models computed from quantized weights.

Past :data:`~shoal.engine.kernels.cpu.quant_linear.KERNEL_MAX_ROWS` rows (prefill chunks, large
decode batches) a GEMM beats the quantized kernel. torch's fp32 ``linear`` runs MKL's sgemm, which
is slow on AMD CPUs; oneDNN's GEMM on a weight packed once into its blocked layout is 2-4x faster
here (64 rows of SmolLM2's 1536x576 layer: 0.31 vs 0.85 ms; its 49152x576 head: 8.6 vs 41 ms) with
fp32 numerics. In bf16 (inputs and output rounded to bf16, fp32 accumulation) it is faster again
(head: 5.4 ms; 256 rows of the layer: 0.61 vs 0.95 ms), but rounding every layer's output to bf16
compounds over the layers and greedy outputs leave fp32's within a few tokens; the head's rounding
does not compound (its logits only pick the next token).
"""

from __future__ import annotations

import functools

import torch

from shoal.engine.loader.errors import ModelLoadError

BATCH_MATMULS = ("auto", "float32", "bf16-head", "bfloat16")
_PACK_ROWS_HINT = 64  # oneDNN picks the packed layout for this many rows; 16..256 measured the same


@functools.cache
def onednn_available() -> bool:
    return bool(torch.backends.mkldnn.is_available())


@functools.cache
def bf16_gemm_supported() -> bool:
    """Whether oneDNN has a native bf16 GEMM on this CPU (AVX512_BF16 or AMX; else it would be emulated)."""
    return onednn_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_batch_matmul(setting: str, native_weights: bool) -> tuple[torch.dtype, torch.dtype] | None:
    """(layers, head) GEMM dtypes for :attr:`EngineConfig.batch_matmul
    <shoal.engine.config.EngineConfig.batch_matmul>`, or None for torch's ``linear``.

    None when the model does not compute from quantized weights or torch has no oneDNN (``auto``,
    ``float32``); ``auto`` is ``bf16-head`` where the CPU has a native bf16 GEMM, else ``float32``.
    A bf16 setting that cannot apply raises :class:`ModelLoadError`.
    """
    if setting not in BATCH_MATMULS:
        raise ModelLoadError(f"batch_matmul must be one of {', '.join(BATCH_MATMULS)}, got {setting!r}")
    if setting in ("auto", "float32"):
        if not (native_weights and onednn_available()):
            return None
        bf16_head = setting == "auto" and bf16_gemm_supported()
        return torch.float32, torch.bfloat16 if bf16_head else torch.float32
    if not native_weights:
        raise ModelLoadError(
            f"batch_matmul={setting} applies to weights computed from their quantized blocks (a Q4_1/Q8_0 "
            "GGUF on CPU in float32, weights=native or auto); this model runs dequantized"
        )
    if not bf16_gemm_supported():
        raise ModelLoadError(f"batch_matmul={setting}: this CPU has no native bf16 GEMM (needs AVX512_BF16 or AMX)")
    return torch.float32 if setting == "bf16-head" else torch.bfloat16, torch.bfloat16


def pack_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` ``[out, in]`` as ``dtype`` in oneDNN's blocked layout (an opaque mkldnn tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype).contiguous(), _PACK_ROWS_HINT)


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight^T (+ bias)`` as fp32 from fp32 ``x``; ``weight`` from :func:`pack_weight`, or a
    plain fp32 ``[out, in]`` tensor (oneDNN reorders it per call).

    A bf16 ``weight`` rounds ``x`` to bf16 and the fp32-accumulated result to bf16 (relative error
    ~2^-8); ``bias`` is added in fp32 after.
    """
    if weight.dtype == torch.bfloat16:
        y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), weight, None, "none", [], "").float()
        return y if bias is None else y.add_(bias)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
