"""oneDNN GEMM on packed weights for the large row counts of models computed from quantized weights.

Past :data:`~shoal.engine.kernels.cpu.quant_linear.KERNEL_MAX_ROWS` rows (prefill chunks, large
decode batches) a GEMM beats the quantized kernel. torch's fp32 ``linear`` runs MKL's sgemm, which
is slow on AMD CPUs; oneDNN's GEMM on a weight packed once into its blocked layout is 2-4x faster
here (64 rows of SmolLM2's 1536x576 layer: 0.31 vs 0.85 ms; its 49152x576 head: 8.6 vs 41 ms) with
fp32 numerics. In bf16 (inputs and output rounded to bf16, fp32 accumulation) it is faster at
hundreds of rows (256 rows: 0.61 vs 0.95 ms) and the head (5.4 ms), but not at 64 rows, and greedy
outputs leave fp32's within a few tokens (the 64-prompt benchmark: 360 vs 377 tok/s for fp32, and
only 28 of 64 outputs identical to fp32's against all 64), so it is opt-in.
"""

from __future__ import annotations

import functools

import torch

from shoal.engine.loader.errors import ModelLoadError

BATCH_MATMULS = ("float32", "bfloat16")
_PACK_ROWS_HINT = 64  # oneDNN picks the packed layout for this many rows; 16..256 measured the same


@functools.cache
def onednn_available() -> bool:
    return bool(torch.backends.mkldnn.is_available())


@functools.cache
def bf16_gemm_supported() -> bool:
    """Whether oneDNN has a native bf16 GEMM on this CPU (AVX512_BF16 or AMX; else it would be emulated)."""
    return onednn_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_batch_matmul(setting: str, native_weights: bool) -> torch.dtype | None:
    """The GEMM dtype for :attr:`EngineConfig.batch_matmul <shoal.engine.config.EngineConfig.batch_matmul>`,
    or None for torch's ``linear``.

    ``float32`` is None when the model does not compute from quantized weights or torch has no
    oneDNN; ``bfloat16`` that cannot apply raises :class:`ModelLoadError`.
    """
    if setting not in BATCH_MATMULS:
        raise ModelLoadError(f"batch_matmul must be float32 or bfloat16, got {setting!r}")
    if setting == "float32":
        return torch.float32 if native_weights and onednn_available() else None
    if not native_weights:
        raise ModelLoadError(
            f"batch_matmul={setting} applies to weights computed from their quantized blocks (a Q4_1/Q8_0 "
            "GGUF on CPU in float32, weights=native or auto); this model runs dequantized"
        )
    if not bf16_gemm_supported():
        raise ModelLoadError(f"batch_matmul={setting}: this CPU has no native bf16 GEMM (needs AVX512_BF16 or AMX)")
    return torch.bfloat16


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
