"""One-command GPU check of Shoal's kernel runtime: correctness, decode roofline, throughput.

Parts (each guarded: one failing still reports the others):

1. kernels: every Triton op against the torch reference on the GPU, fp32/fp16/bf16,
   relative error ``max|triton - torch| / max|torch|`` (target <= 1e-2), plus the sampling
   filter's kept-set agreement and its time against the torch sort-based reference;
2. decode: one decode step (forward + logits) of a Llama-3-8B-shaped model with random bf16
   weights built on the GPU, at batch 1/32/256 and 512 cached tokens per sequence, eager and
   CUDA-graph replay, against the HBM roofline ``(weight + KV bytes read) / copy bandwidth``
   (bandwidth measured in the same run: a device-to-device copy, bytes read + written);
3. throughput: 256 sequences x 512 prompt / 256 output tokens through ``LLM`` (dummy random
   weights, no checkpoint on disk) against transformers' ``generate`` on the same GPU and shape.
   The default shape there is Llama-3.2-1B (``--throughput-shape 8b`` for the 8B shape).

Results: a table printed last, ``$OUT/gpu_check.{md,json}`` (``OUT`` defaults to bench/results).
``--smoke`` runs the same code on CPU with tiny shapes (Triton interpreter, fp32/fp16 only).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def import_shoal() -> None:
    """Make ``shoal.engine`` importable from this checkout when the project is not pip-installed."""
    try:
        if importlib.util.find_spec("shoal.engine") is not None:
            return
    except ModuleNotFoundError:
        pass
    pkg = types.ModuleType("shoal")
    pkg.__path__ = []
    sys.modules["shoal"] = pkg
    spec = importlib.util.spec_from_file_location(
        "shoal.engine", ROOT / "engine" / "__init__.py", submodule_search_locations=[str(ROOT / "engine")]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["shoal.engine"] = module
    spec.loader.exec_module(module)
    pkg.engine = module  # type: ignore[attr-defined]


class Check:
    """Shared state: device, smoke flag, time budget, results."""

    def __init__(self, smoke: bool, budget_s: float, throughput_shape: str) -> None:
        import torch

        self.torch = torch
        self.smoke = smoke
        self.device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
        self.deadline = time.monotonic() + budget_s
        self.throughput_shape = "tiny" if smoke else throughput_shape
        self.results: dict[str, Any] = {}
        self.rows: list[tuple[str, str, str, str]] = []  # (part, metric, value, verdict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def time_it(self, fn: Callable[[], Any], iters: int, warmup: int = 2) -> float:
        """Mean seconds per call (CUDA events on GPU, wall clock on CPU)."""
        for _ in range(warmup):
            fn()
        self.sync()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        self.sync()
        return (time.perf_counter() - start) / iters

    def row(self, part: str, metric: str, value: str, verdict: str = "") -> None:
        self.rows.append((part, metric, value, verdict))

# ---- report -------------------------------------------------------------------------------------------
def environment(c: Check) -> dict[str, Any]:
    torch = c.torch
    env = {"torch": torch.__version__, "device": str(c.device), "smoke": c.smoke}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if c.device.type == "cuda":
        props = torch.cuda.get_device_properties(c.device)
        env.update(gpu=props.name, sms=props.multi_processor_count, memory_gb=props.total_memory / 1e9)
    return env


def write_report(c: Check, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(c.results, indent=2, default=str))
    env = c.results.get("environment", {})
    lines = ["# Shoal GPU check", "", f"`{json.dumps(env)}`", "", "| part | metric | value | verdict |", "|---|---|---|---|"]
    lines += [f"| {p} | {m} | {v} | {x} |" for p, m, v, x in c.rows]
    errors = {k: v["error"] for k, v in c.results.items() if isinstance(v, dict) and "error" in v}
    for name, err in errors.items():
        lines += ["", f"## {name} failed", "", "```", err.strip(), "```"]
    (out_dir / "gpu_check.md").write_text("\n".join(lines) + "\n")


def print_table(c: Check) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for row in c.rows:
            print(" | ".join(row))
        return
    table = Table(title=f"Shoal GPU check ({c.results.get('environment', {}).get('gpu', c.device)})")
    for col in ("part", "metric", "value", "verdict"):
        table.add_column(col)
    for p, m, v, x in c.rows:
        style = {"PASS": "green", "FAIL": "red", "ERROR": "red"}.get(x, "")
        table.add_row(p, m, v, f"[{style}]{x}[/{style}]" if style else x)
    Console(width=140).print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (Triton interpreter)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="time budget; later parts skip when it runs out")
    parser.add_argument("--throughput-shape", choices=["1b", "8b"], default="1b")
    parser.add_argument("--parts", default="kernels,decode,throughput")
    args = parser.parse_args()
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    import_shoal()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU visible; run with --smoke for the CPU dry run", file=sys.stderr)
        return 2
    c = Check(args.smoke, args.budget_s, args.throughput_shape)
    out_dir = Path(os.environ.get("OUT") or ROOT / "bench" / "results")
    c.results["environment"] = environment(c)
    from gpu_check_parts import part_decode, part_kernels, part_throughput

    parts = {"kernels": part_kernels, "decode": part_decode, "throughput": part_throughput}
    for name in args.parts.split(","):
        started = time.monotonic()
        print(f"== {name} (time left {c.left():.0f} s)", flush=True)
        try:
            c.results[name] = parts[name](c)
        except Exception:
            err = traceback.format_exc()
            print(err, file=sys.stderr, flush=True)
            c.results[name] = {"error": err}
            c.row(name, "error", err.strip().splitlines()[-1][:100], "ERROR")
        c.results.setdefault("seconds", {})[name] = time.monotonic() - started
        write_report(c, out_dir)  # after every part: a later crash or timeout keeps what was measured
    print_table(c)
    print(f"results: {out_dir}/gpu_check.md, {out_dir}/gpu_check.json")
    return 1 if any(r[3] in ("FAIL", "ERROR") for r in c.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
