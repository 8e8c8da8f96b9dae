"""The C++ Q4_1/Q8_0 kernels against the pure-torch reference.

Tolerance: the kernel sums in a different order than torch's GEMM and dequantizes with one fused
multiply-add, so results may differ by float rounding only: rtol 1e-5 and atol 1e-5 x (sum |x| |w|).
"""

from __future__ import annotations

import pytest
import torch

from shoal.engine.kernels.cpu.build import cpu_supports_kernels, quant_kernels
from shoal.engine.kernels.cpu.quant_linear import (
    BLOCK_BYTES,
    KERNEL_MAX_ROWS,
    QuantizedWeight,
    quant_linear,
    reference_dequantize,
    reference_linear,
)

pytestmark = pytest.mark.skipif(not cpu_supports_kernels(), reason="the quantized kernels need AVX2 + FMA")


def random_blocks(qtype: str, rows: int, cols: int, seed: int = 0) -> QuantizedWeight:
    """Random blocks with sane f16 scales (random bytes would give inf/nan scales)."""
    gen = torch.Generator().manual_seed(seed)
    num_blocks = rows * cols // 32
    raw = torch.randint(0, 256, (num_blocks, BLOCK_BYTES[qtype]), dtype=torch.uint8, generator=gen)
    raw[:, 0:2] = (torch.rand(num_blocks, 1, generator=gen) * 0.02).half().view(torch.uint8)
    if qtype == "Q4_1":
        raw[:, 2:4] = (torch.randn(num_blocks, 1, generator=gen) * 0.05).half().view(torch.uint8)
    return QuantizedWeight(qtype, raw.reshape(rows, -1).contiguous(), cols)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, KERNEL_MAX_ROWS, KERNEL_MAX_ROWS + 3])
def test_linear_matches_reference(qtype: str, rows: int) -> None:
    weight = random_blocks(qtype, 200, 96)
    x = torch.randn(rows, 96, generator=torch.Generator().manual_seed(1))
    bias = torch.randn(200)
    expected = reference_linear(x, weight, bias)
    scale = (x.abs() @ reference_dequantize(weight).abs().T).max().item()
    torch.testing.assert_close(quant_linear(x, weight, bias), expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("avx512", [False, True], ids=["avx2", "avx512"])
@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 9, 11, KERNEL_MAX_ROWS, 21])
@pytest.mark.parametrize("out_features", [1, 37, 300])
def test_each_instruction_set_matches_reference(avx512: bool, qtype: str, rows: int, out_features: int) -> None:
    """Both code paths (the CPU picks one), every tile shape (up to 10 rows in one pass, more in
    several), odd output sizes (the tiles' tails) and thread chunks."""
    kernels = quant_kernels()
    if avx512 and not kernels.has_avx512():
        pytest.skip("this CPU has no AVX-512")
    weight = random_blocks(qtype, out_features, 160, seed=out_features)
    x = torch.randn(rows, 160, generator=torch.Generator().manual_seed(rows))
    y = getattr(kernels, f"{qtype.lower()}_linear")(x, weight.blocks, 160, avx512=avx512)
    scale = (x.abs() @ reference_dequantize(weight).abs().T).max().item()
    torch.testing.assert_close(y, reference_linear(x, weight), rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("avx512", [False, True], ids=["avx2", "avx512"])
@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_a_row_gives_the_same_bits_whatever_else_is_in_the_call(avx512: bool, qtype: str) -> None:
    """Speculative decoding is lossless only if a row's output does not depend on how many rows
    share the call or where the row sits in it: a 1-row decode and the same row inside a 9-row
    verify must agree bit for bit. Every call size 1..17 at every offset."""
    kernels = quant_kernels()
    if avx512 and not kernels.has_avx512():
        pytest.skip("this CPU has no AVX-512")
    weight = random_blocks(qtype, 75, 160, seed=7)  # odd: the 4- and 2-wide tiles leave tails
    x = torch.randn(17, 160, generator=torch.Generator().manual_seed(3))
    linear = getattr(kernels, f"{qtype.lower()}_linear")
    alone = torch.cat([linear(x[i : i + 1], weight.blocks, 160, avx512=avx512) for i in range(17)])
    for rows in range(1, 18):
        for start in range(17 - rows + 1):
            together = linear(x[start : start + rows], weight.blocks, 160, avx512=avx512)
            assert torch.equal(together, alone[start : start + rows]), f"{rows} rows from row {start}"


def test_results_do_not_depend_on_the_thread_count() -> None:
    weight = random_blocks("Q4_1", 1000, 576, seed=5)
    x = torch.randn(3, 576, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = quant_linear(x, weight)
        torch.set_num_threads(max(threads, 2))
        assert torch.equal(quant_linear(x, weight), single)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0"])
def test_dequantize_matches_reference(qtype: str) -> None:
    weight = random_blocks(qtype, 64, 128, seed=3)
    torch.testing.assert_close(weight.dequantize(), reference_dequantize(weight), rtol=1e-6, atol=1e-7)


def test_leading_dimensions_are_kept() -> None:
    weight = random_blocks("Q4_1", 16, 64)
    x = torch.randn(2, 3, 64)
    assert quant_linear(x, weight).shape == (2, 3, 16)


def test_mismatched_input_is_a_clear_error() -> None:
    weight = random_blocks("Q8_0", 16, 64)
    with pytest.raises(ValueError, match="32 features, the weight 64"):
        quant_linear(torch.randn(1, 32), weight)


def test_blocks_must_fit_the_shape() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        QuantizedWeight("Q4_1", torch.zeros(4, 21, dtype=torch.uint8), 32)
    with pytest.raises(ValueError, match="unsupported"):
        QuantizedWeight("Q6_K", torch.zeros(4, 21, dtype=torch.uint8), 32)
