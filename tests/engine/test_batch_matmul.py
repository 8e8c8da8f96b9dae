"""oneDNN GEMMs on packed weights for inputs of more than KERNEL_MAX_ROWS rows (weights=native).

Written tolerances, per output element, against fp32 ``F.linear`` on the same fp32 weight, in units
of ``s = |x| @ |W|^T`` (the sum of the products' magnitudes):
- float32: ``2^-16 s`` (only the summation order differs);
- bfloat16: ``2^-7 s`` (x and W each rounded to bf16, ``<= 2^-8`` per product, and the output
  rounded to bf16, ``<= 2^-9``; accumulation in fp32).
Tiny models' logits (``|logit| <= 4.5``) against weights=dequantized: 1e-4 with fp32 GEMMs (as
test_quant_model), 0.2 with bf16 GEMMs (measured 4.2e-2 to 9.4e-2: the rounding compounds over
the layers).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shoal.engine.config import EngineConfig
from shoal.engine.kernels.cpu import batch_matmul
from shoal.engine.kernels.cpu.batch_matmul import (
    bf16_gemm_supported,
    onednn_available,
    pack_weight,
    packed_linear,
    resolve_batch_matmul,
)
from shoal.engine.kernels.cpu.build import cpu_supports_kernels
from shoal.engine.kernels.cpu.quant_linear import KERNEL_MAX_ROWS
from shoal.engine.loader import ModelLoadError, load_model
from support.paged_runner import PagedRunner
from support.tiny_models import write_tiny_gguf

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")
needs_bf16 = pytest.mark.skipif(not bf16_gemm_supported(), reason="no native bf16 GEMM on this CPU")
F32, BF16 = torch.float32, torch.bfloat16
TOLERANCE = {F32: 2.0**-16, BF16: 2.0**-7}


@pytest.mark.parametrize("dtype", [F32, pytest.param(BF16, marks=needs_bf16)])
@pytest.mark.parametrize("rows", [KERNEL_MAX_ROWS + 1, 64, 300])
def test_packed_linear_matches_fp32_linear(dtype: torch.dtype, rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 576, generator=gen)
    w = torch.randn(1536, 576, generator=gen) * 0.05
    bias = torch.randn(1536, generator=gen)
    packed = pack_weight(w, dtype)
    assert packed.is_mkldnn and packed.dtype == dtype and packed.shape == w.shape
    y = packed_linear(x, packed, bias)
    assert y.dtype == torch.float32 and y.shape == (rows, 1536)
    bound = TOLERANCE[dtype] * (x.abs() @ w.abs().T)
    assert ((y - F.linear(x, w, bias)).abs() <= bound).all()
    # A strided view (q/k/v splits, reshapes) gives the same result as its contiguous copy.
    wide = torch.cat([x, x], dim=1)[:, :576]
    torch.testing.assert_close(packed_linear(wide, packed, bias), y, rtol=0, atol=0)


def test_plain_fp32_weight_works_unpacked() -> None:
    x, w = torch.randn(40, 64), torch.randn(1000, 64)
    bound = TOLERANCE[F32] * (x.abs() @ w.abs().T)
    assert ((packed_linear(x, w) - F.linear(x, w)).abs() <= bound).all()


def test_settings_resolve() -> None:
    assert resolve_batch_matmul("float32", native_weights=True) == F32
    assert resolve_batch_matmul("float32", native_weights=False) is None  # torch's linear, as before
    with pytest.raises(ModelLoadError, match="runs dequantized"):
        resolve_batch_matmul("bfloat16", native_weights=False)
    with pytest.raises(ModelLoadError, match="must be float32 or bfloat16"):
        resolve_batch_matmul("fp16", native_weights=True)


@needs_bf16
def test_bf16_resolves_where_supported() -> None:
    assert resolve_batch_matmul("bfloat16", native_weights=True) == BF16


def test_without_bf16_gemm_bf16_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_matmul, "bf16_gemm_supported", lambda: False)
    assert resolve_batch_matmul("float32", native_weights=True) == F32
    with pytest.raises(ModelLoadError, match="no native bf16 GEMM"):
        resolve_batch_matmul("bfloat16", native_weights=True)


def test_without_onednn_float32_keeps_torch_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_matmul, "onednn_available", lambda: False)
    assert resolve_batch_matmul("float32", native_weights=True) is None


def test_engine_config_validates_the_setting() -> None:
    with pytest.raises(ValueError, match="batch_matmul must be float32 or bfloat16"):
        EngineConfig(model="x", batch_matmul="bf16")
    with pytest.raises(ValueError, match="needs native weights"):
        EngineConfig(model="x", weights="dequantized", batch_matmul="bfloat16")
    assert EngineConfig(model="x").batch_matmul == "float32"


def test_cli_flag_maps_to_the_setting() -> None:
    import argparse

    from shoal.engine.cli_args import add_engine_args, engine_config_from_args

    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    assert engine_config_from_args(parser.parse_args(["--model", "m"])).batch_matmul == "float32"
    config = engine_config_from_args(parser.parse_args(["--model", "m", "--batch-matmul", "bfloat16"]))
    assert config.batch_matmul == "bfloat16"
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--batch-matmul", "int8"])


@pytest.mark.skipif(not cpu_supports_kernels(), reason="the quantized kernels need AVX2 + FMA")
@pytest.mark.parametrize(
    ("fixture", "dtype", "logits_atol"),
    [
        ("tiny_llama_dir", F32, 1e-4),  # untied head
        ("tiny_llama_tied_dir", F32, 1e-4),
        ("tiny_qwen2_dir", F32, 1e-4),  # qkv bias
        pytest.param("tiny_llama_tied_dir", BF16, 0.2, marks=needs_bf16),
        pytest.param("tiny_qwen2_dir", BF16, 0.2, marks=needs_bf16),
        pytest.param("tiny_qwen3_dir", BF16, 0.2, marks=needs_bf16),  # untied head
    ],
)
def test_model_with_packed_gemm_matches_fp32(
    fixture: str,
    dtype: torch.dtype,
    logits_atol: float,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_tiny_gguf(request.getfixturevalue(fixture), tmp_path / "q8.gguf", "Q8_0")
    native = load_model(str(path), torch.float32, "cpu", "native").model
    reference = load_model(str(path), torch.float32, "cpu", "dequantized").model
    embedding = native.model.embed_tokens.weight.clone()
    native.use_packed_batch_gemm(dtype)
    mlp = native.model.layers[0].mlp.down_proj
    assert mlp.weight.is_mkldnn and mlp.weight.dtype == dtype
    assert native.model.embed_tokens.weight.dtype == torch.float32  # the lookup keeps its table
    assert torch.equal(native.model.embed_tokens.weight, embedding)
    with pytest.raises(ModelLoadError, match="call once"):
        native.use_packed_batch_gemm(dtype)

    calls: list[tuple[int, torch.dtype]] = []
    real = packed_linear

    def spy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        calls.append((x.shape[0], weight.dtype))
        return real(x, weight, bias)

    monkeypatch.setattr("shoal.engine.models.llama.packed_linear", spy)
    runners = PagedRunner(native), PagedRunner(reference)
    prompt = [(i * 7919) % 1000 + 3 for i in range(KERNEL_MAX_ROWS + 12)]
    a, b = (runner.step({0: prompt, 1: prompt[:5]}) for runner in runners)  # the GEMMs
    assert {n for n, _ in calls} == {KERNEL_MAX_ROWS + 17} and {d for _, d in calls} == {dtype}
    torch.testing.assert_close(a, b, atol=logits_atol, rtol=0)
    calls.clear()
    a, b = (runner.step({0: [7], 1: [9]}) for runner in runners)  # 2 rows: the quantized kernel
    assert calls == []
    torch.testing.assert_close(a, b, atol=logits_atol, rtol=0)
