"""Where the quantized kernel stops beating oneDNN's GEMM: per layer shape and the LM head, by rows.

Loads the bundled SmolLM2-135M with weights=native and, for each row count, times one call of
every quantized layer of a kind across all 30 layers in turn (so the weights come from memory, as
in a decode step, not from cache), through (a) the C++ quantized kernel, (b) oneDNN's fp32 GEMM
on packed weights (``batch_matmul=float32``), (c) the same in bf16, and (d) torch's fp32 ``linear``
(MKL; the path before packed GEMMs). Prints a table of milliseconds per sweep (median of 5) and
writes it to ``bench/results/gemm-crossover-cpu.md``.

    python bench/gemm_crossover.py [--rows 4,8,12,16,20,24,32,48,64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from shoal.engine.kernels.cpu.batch_matmul import pack_weight, packed_linear
from shoal.engine.kernels.cpu.build import quant_kernels
from shoal.engine.kernels.cpu.quant_linear import KERNEL_MAX_ROWS, QuantizedWeight
from shoal.engine.loader import load_model

OUTPUT = Path(__file__).parent / "results" / "gemm-crossover-cpu.md"


def kernel(x: torch.Tensor, q: QuantizedWeight) -> torch.Tensor:
    return getattr(quant_kernels(), f"{q.qtype.lower()}_linear")(x, q.blocks, q.in_features)


def sweep_ms(calls: list[Callable[[], torch.Tensor]], repeats: int = 5) -> float:
    for call in calls:
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for call in calls:
            call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="4,8,12,16,20,24,32,48,64")
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args()
    rows_list = [int(r) for r in args.rows.split(",")]
    model = load_model("bundled:smollm2-135m-instruct", torch.float32, "cpu", "native").model
    layers = model.model.layers
    kinds = {
        "qkv_proj": [layer.self_attn.qkv_proj for layer in layers],
        "o_proj": [layer.self_attn.o_proj for layer in layers],
        "gate_up_proj": [layer.mlp.gate_up_proj for layer in layers],
        "down_proj": [layer.mlp.down_proj for layer in layers],
    }
    head_q = model._quantized_lm_head
    assert head_q is not None
    table = model.model.embed_tokens.weight.detach()
    groups: dict[str, list[tuple[QuantizedWeight, torch.Tensor]]] = {
        name: [(m.quantized, m.weight.detach()) for m in modules if m.quantized is not None]
        for name, modules in kinds.items()
    }
    groups["lm_head"] = [(head_q, table)]
    packed = {
        name: [(q, w, pack_weight(w, torch.float32), pack_weight(w, torch.bfloat16)) for q, w in items]
        for name, items in groups.items()
    }
    lines = [
        "# Quantized kernel vs oneDNN GEMM by rows (CPU)",
        "",
        f"- command: `python bench/gemm_crossover.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}; {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; KERNEL_MAX_ROWS = {KERNEL_MAX_ROWS}",
        "- ms per sweep: one call per layer across the 30 layers (lm_head: one call; its packed fp32 row packs a copy "
        "of the tied table, the engine multiplies the table unpacked: the `unpacked` column); median of 5 sweeps",
        "",
        "| weight | rows | kernel | oneDNN fp32 packed | fp32 unpacked | oneDNN bf16 packed | torch linear (MKL) | fastest |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines[-2:]), flush=True)
    for name, items in packed.items():
        in_features = items[0][0].in_features
        for rows in rows_list:
            x = torch.randn(rows, in_features)
            cols = {
                "kernel": sweep_ms([partial(kernel, x, q) for q, _, _, _ in items]),
                "oneDNN fp32 packed": sweep_ms([partial(packed_linear, x, p) for _, _, p, _ in items]),
                "fp32 unpacked": sweep_ms([partial(packed_linear, x, w) for _, w, _, _ in items]),
                "oneDNN bf16 packed": sweep_ms([partial(packed_linear, x, b) for _, _, _, b in items]),
                "torch linear (MKL)": sweep_ms([partial(F.linear, x, w) for _, w, _, _ in items]),
            }
            fastest = min(cols, key=lambda k: cols[k])
            qtype = items[0][0].qtype
            line = f"| {name} ({qtype}) | {rows} | " + " | ".join(f"{v:.2f}" for v in cols.values()) + f" | {fastest} |"
            lines.append(line)
            print(line, flush=True)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
