"""Linear layers computed from GGUF quantized blocks (Q4_1, Q8_0) on CPU.

At small batches the C++ kernel reads the blocks and dequantizes them in registers (4-7x fewer
bytes than fp32 weights); past :data:`KERNEL_MAX_ROWS` rows :func:`quant_linear` dequantizes the
weight for the call and uses torch's GEMM (the model's layers keep packed weights for oneDNN's
GEMM instead: :mod:`~shoal.engine.kernels.cpu.batch_matmul`). :func:`reference_linear` is the
pure-torch reference the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shoal.engine.kernels.cpu.build import quant_kernels

BLOCK = 32
BLOCK_BYTES = {"Q4_1": 20, "Q8_0": 34}
KERNEL_MAX_ROWS = 48
"""Up to this many rows the kernel wins against oneDNN's fp32 GEMM on packed weights
(``bench/gemm_crossover.py``, all 30 layers of SmolLM2-135M in turn: 30.4 vs 33.7 ms at 48 rows,
a tie at 56, 40.7 vs 39.4 at 64; its 49152x576 head against the GEMM on the unpacked table: 7.9 vs
8.7 ms at 48, a tie at 64); above, a GEMM."""
_DEQUANT_CHUNK_ROWS = 8192  # bounds the fp32 scratch of the fallback (lm_head: 49152 rows)


@dataclass(frozen=True)
class QuantizedWeight:
    """A ``[out_features, in_features]`` weight kept as GGUF blocks (``uint8 [out, in/32*bytes]``)."""

    qtype: str
    blocks: torch.Tensor
    in_features: int

    def __post_init__(self) -> None:
        if self.qtype not in BLOCK_BYTES:
            raise ValueError(f"unsupported quantized weight type {self.qtype!r}; supported: Q4_1, Q8_0")
        expected = self.in_features // BLOCK * BLOCK_BYTES[self.qtype]
        if self.in_features % BLOCK or self.blocks.dim() != 2 or self.blocks.shape[1] != expected:
            raise ValueError(
                f"{self.qtype} blocks of shape {tuple(self.blocks.shape)} do not fit in_features={self.in_features}"
            )

    @property
    def out_features(self) -> int:
        return int(self.blocks.shape[0])

    def dequantize(self) -> torch.Tensor:
        """The fp32 ``[out, in]`` weight (C++ kernel)."""
        return getattr(quant_kernels(), f"{self.qtype.lower()}_dequantize")(self.blocks, self.in_features)


def quant_linear(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W^T (+ bias)`` for fp32 ``x`` of shape ``[..., in_features]``."""
    if x.shape[-1] != weight.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the weight {weight.in_features}")
    lead = x.shape[:-1]
    flat = x.reshape(-1, weight.in_features)
    if flat.shape[0] <= KERNEL_MAX_ROWS:
        y = getattr(quant_kernels(), f"{weight.qtype.lower()}_linear")(flat, weight.blocks, weight.in_features)
    elif weight.out_features <= _DEQUANT_CHUNK_ROWS:
        y = F.linear(flat, weight.dequantize())
    else:
        parts = [
            F.linear(flat, QuantizedWeight(weight.qtype, chunk, weight.in_features).dequantize())
            for chunk in weight.blocks.split(_DEQUANT_CHUNK_ROWS)
        ]
        y = torch.cat(parts, dim=-1)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, weight.out_features)


def reference_dequantize(weight: QuantizedWeight) -> torch.Tensor:
    """Pure-torch dequantization: ``d * q (+ m)`` per block of 32, as llama.cpp defines the formats."""
    blocks = weight.blocks.reshape(-1, BLOCK_BYTES[weight.qtype])
    d = blocks[:, 0:2].contiguous().view(torch.float16).float()
    if weight.qtype == "Q8_0":
        values = d * blocks[:, 2:].contiguous().view(torch.int8).float()
    else:
        m = blocks[:, 2:4].contiguous().view(torch.float16).float()
        qs = blocks[:, 4:]
        values = d * torch.cat((qs & 0x0F, qs >> 4), dim=-1).float() + m
    return values.reshape(weight.out_features, weight.in_features)


def reference_linear(x: torch.Tensor, weight: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, reference_dequantize(weight), bias)
