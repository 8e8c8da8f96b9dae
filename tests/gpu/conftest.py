"""The GPU tier (``-m gpu``): Triton vs torch parity with decode CUDA graphs on and off, fp32 and bf16.

On a machine without CUDA the graphs-off cases run on CPU through Triton's interpreter (marked
``kernels``, like tests/kernels), and the CUDA cases are skipped. ``TRITON_INTERPRET`` must be set
before anything imports triton, hence here at import time, and only when there is no GPU.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
