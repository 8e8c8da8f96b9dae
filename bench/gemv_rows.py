"""What one more row costs the quantized GEMV kernel, over SmolLM2-135M's weight shapes.

Speculative decoding verifies k drafted tokens in one forward pass: k+1 rows through every
linear. This times the C++ Q4_1/Q8_0 kernel (``engine/kernels/cpu/quant_gemv.cpp``) on random
blocks shaped like the bundled model (30 layers of q, k, v, o, gate, up, down in Q4_1 plus the
49152x576 LM head, timed in Q4_1 and in Q8_0, the bundled model's) for 1..16 rows, optionally
against the kernel of another git revision, the sides alternating in every round (best of
``--rounds``). Then, per layer shape, the kernel against torch's ``F.linear`` (fp32, and on
bf16 tensors) and oneDNN on packed fp32/bf16 weights (the engine's GEMM past
``KERNEL_MAX_ROWS``) at 8..64 rows, to place ``KERNEL_MAX_ROWS``.

    python bench/gemv_rows.py                       # kernel rows table + crossover table
    python bench/gemv_rows.py --baseline HEAD~1     # A/B against an earlier kernel
    python bench/gemv_rows.py --out bench/results/gemv-rows.md
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from shoal.engine.kernels.cpu.batch_matmul import pack_weight, packed_linear
from shoal.engine.kernels.cpu.build import load_extension, quant_kernels
from shoal.engine.kernels.cpu.quant_linear import BLOCK_BYTES, QuantizedWeight

REPO = Path(__file__).resolve().parent.parent
KERNEL = "engine/kernels/cpu/quant_gemv.cpp"
LAYERS = 30
HIDDEN, KV, FFN, VOCAB = 576, 192, 1536, 49152
# one decoder layer's linears as (out_features, in_features): q, k, v, o, gate, up, down
LAYER_SHAPES = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN), (FFN, HIDDEN), (FFN, HIDDEN), (HIDDEN, FFN)]
Linear = Callable[[torch.Tensor, QuantizedWeight], torch.Tensor]


def random_weight(qtype: str, out_features: int, in_features: int, gen: torch.Generator) -> QuantizedWeight:
    """Random blocks whose f16 scale (and Q4_1 minimum) is 2^-8: no inf/nan, like real weights."""
    size = BLOCK_BYTES[qtype]
    raw = torch.randint(0, 256, (out_features * in_features // 32, size), dtype=torch.uint8, generator=gen)
    raw[:, 0:2] = torch.tensor([0x00, 0x1C], dtype=torch.uint8)
    if qtype == "Q4_1":
        raw[:, 2:4] = torch.tensor([0x00, 0x1C], dtype=torch.uint8)
    return QuantizedWeight(qtype, raw.reshape(out_features, -1).contiguous(), in_features)


def kernel_linear(module: ModuleType) -> Linear:
    def linear(x: torch.Tensor, w: QuantizedWeight) -> torch.Tensor:
        return getattr(module, f"{w.qtype.lower()}_linear")(x, w.blocks, w.in_features)

    return linear


def baseline_kernels(revision: str) -> ModuleType:
    """The kernel source at ``revision`` built as its own extension (cached like the current one)."""
    source = subprocess.run(["git", "show", f"{revision}:{KERNEL}"], cwd=REPO, check=True, capture_output=True).stdout
    folder = Path(tempfile.gettempdir()) / "shoal-gemv-baseline"
    folder.mkdir(exist_ok=True)
    path = folder / "quant_gemv.cpp"
    path.write_bytes(source)
    return load_extension("shoal_quant_gemv_baseline", path, f"quantized CPU kernels at {revision}")


def time_model(linear: Linear, layers: list[QuantizedWeight], head: QuantizedWeight, rows: int, repeats: int) -> float:
    """Seconds for one pass over all layers and the head with ``rows`` rows (mean of ``repeats``)."""
    xs = {features: torch.randn(rows, features) for features in (HIDDEN, FFN)}
    for w in layers:  # warm: the pool's threads, the caches
        linear(xs[w.in_features], w)
    start = time.perf_counter()
    for _ in range(repeats):
        for w in layers:
            linear(xs[w.in_features], w)
        linear(xs[HIDDEN], head)
    return (time.perf_counter() - start) / repeats


def rows_table(sides: dict[str, Linear], rows_list: list[int], rounds: int, gen: torch.Generator) -> list[str]:
    layers = [random_weight("Q4_1", o, i, gen) for _ in range(LAYERS) for o, i in LAYER_SHAPES]
    heads = {qtype: random_weight(qtype, VOCAB, HIDDEN, gen) for qtype in ("Q4_1", "Q8_0")}
    best: dict[tuple[str, str, int], float] = {}
    for _ in range(rounds):
        for rows in rows_list:
            for name, linear in sides.items():
                for qtype, head in heads.items():
                    seconds = time_model(linear, layers, head, rows, repeats=3)
                    key = (name, qtype, rows)
                    best[key] = min(best.get(key, seconds), seconds)
    lines = ["| rows | " + " | ".join(f"{n}, {q} head: ms (x 1 row)" for n in sides for q in heads) + " |"]
    lines.append("|---:|" + "---:|" * (len(sides) * len(heads)))
    for rows in rows_list:
        cells = [
            f"{best[(n, q, rows)] * 1e3:.2f} ({best[(n, q, rows)] / best[(n, q, rows_list[0])]:.2f}x)"
            for n in sides
            for q in heads
        ]
        lines.append(f"| {rows} | " + " | ".join(cells) + " |")
    return lines


def time_call(fn: Callable[..., object], *args: object, budget: float = 0.05) -> float:
    """Best seconds per call of ``fn(*args)`` over a few batches of calls (each about ``budget`` s)."""
    fn(*args)
    start = time.perf_counter()
    fn(*args)
    calls = max(1, int(budget / max(time.perf_counter() - start, 1e-6)))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def bf16_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x.bfloat16(), weight).float()


def each(fn: Callable[[torch.Tensor, Any], object], x: torch.Tensor, weights: list[Any]) -> None:
    for w in weights:
        fn(x, w)


def crossover_table(linear: Linear, rows_list: list[int], gen: torch.Generator) -> list[str]:
    """Per shape, microseconds per call: the kernel, fp32 and bf16 ``F.linear`` and oneDNN on packed
    fp32 and bf16 weights (the engine's path past KERNEL_MAX_ROWS). Each call cycles through
    LAYERS copies of a layer's weight, so they come from memory as in a forward pass."""
    shapes = sorted(set(LAYER_SHAPES)) + [(VOCAB, HIDDEN)]
    names = ["kernel Q4_1", "kernel Q8_0", "F.linear fp32", "F.linear bf16", "oneDNN fp32", "oneDNN bf16"]
    lines = [f"| shape (out x in) | rows | {' | '.join(f'{n} us' for n in names)} | fastest |"]
    lines.append("|---|---:|" + "---:|" * len(names) + "---|")
    for out_features, in_features in shapes:
        copies = 1 if out_features == VOCAB else LAYERS
        w4 = [random_weight("Q4_1", out_features, in_features, gen) for _ in range(copies)]
        w8 = [random_weight("Q8_0", out_features, in_features, gen) for _ in range(copies)]
        dense = [w.dequantize() for w in w4]
        sides: dict[str, tuple[Callable[[torch.Tensor, Any], object], list[Any]]] = {
            "kernel Q4_1": (linear, w4),
            "kernel Q8_0": (linear, w8),
            "F.linear fp32": (F.linear, dense),
            "F.linear bf16": (bf16_linear, [w.bfloat16() for w in dense]),
            "oneDNN fp32": (packed_linear, [pack_weight(w, torch.float32) for w in dense]),
            "oneDNN bf16": (packed_linear, [pack_weight(w, torch.bfloat16) for w in dense]),
        }
        for rows in rows_list:
            x = torch.randn(rows, in_features)
            times = {name: time_call(each, fn, x, weights) / copies for name, (fn, weights) in sides.items()}
            fastest = min(times, key=lambda k: times[k])
            cells = " | ".join(f"{t * 1e6:.0f}" for t in times.values())
            lines.append(f"| {out_features}x{in_features} | {rows} | {cells} | {fastest} |")
        del sides, dense
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="git revision whose kernel runs alongside the current one")
    parser.add_argument("--rows", default="1,2,3,4,5,8,9,12,16", help="row counts of the model table")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (the best is kept)")
    parser.add_argument("--crossover-rows", default="8,16,24,32,48,64", help="row counts of the per-shape table")
    parser.add_argument("--no-crossover", action="store_true", help="skip the per-shape table")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    current = kernel_linear(quant_kernels())
    sides = {"kernel": current}
    if args.baseline:
        sides = {f"baseline {args.baseline}": kernel_linear(baseline_kernels(args.baseline)), "kernel": current}
    rows_list = [int(r) for r in args.rows.split(",")]
    lines = [
        "# Quantized GEMV: cost of rows (SmolLM2-135M shapes), CPU",
        "",
        f"- machine: {platform.machine()}, {torch.get_num_threads()} threads, {platform.platform()}",
        f"- command: `{' '.join(['python bench/gemv_rows.py', *sys.argv[1:]])}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        f"One pass over {LAYERS} layers (q, k, v, o, gate, up, down in Q4_1, random blocks) plus the "
        f"{VOCAB}x{HIDDEN} LM head (Q4_1 or Q8_0), per row count; best of {args.rounds} alternating rounds; "
        "in parentheses: over the 1-row time of the same column.",
        "",
        *rows_table(sides, rows_list, args.rounds, gen),
    ]
    print("\n".join(lines), flush=True)
    if not args.no_crossover:
        table = crossover_table(current, [int(r) for r in args.crossover_rows.split(",")], gen)
        extra = [
            "",
            f"Per layer shape, us per call (best of 3 batches; each batch cycles through {LAYERS} copies of the "
            "layer's weight, so weights come from memory as in a forward pass; the head has one copy): the kernel "
            "from blocks; torch `F.linear` on the dequantized fp32 weight and on bf16 copies (`x.bfloat16()`, "
            "output `.float()`); oneDNN on weights packed at load in fp32 and bf16 "
            "(`engine/kernels/cpu/batch_matmul.py`, the engine's GEMM past `KERNEL_MAX_ROWS`).",
            "",
            *table,
        ]
        print("\n".join(extra))
        lines += extra
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
