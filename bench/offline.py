"""Offline throughput: Shoal's engine vs transformers' batched generate on the bundled model.

64 deterministic chat prompts (20-400 prompt tokens), 128 greedy output tokens each.
Each configuration runs in its own process so its peak RSS is its own. Prints a table
with the ratio against the best transformers configuration and writes
``bench/results/offline-cpu.md`` (machine, command, figures, profile).

    python bench/offline.py                 # the full benchmark (~10 min on 2 cores)
    python bench/offline.py --quick         # a smoke run (tiny workload)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODEL = "bundled:smollm2-135m-instruct"
WORDS = ["system", "cluster", "router", "engine", "token", "cache", "block", "prefix", "memory", "batch", "queue", "latency", "river", "mountain", "history", "science", "music", "garden", "ocean", "planet", "language", "computer", "travel", "recipe", "weather", "library", "market", "energy", "forest", "city", "window", "question", "answer", "story", "friend", "journey", "morning", "evening", "bridge", "picture"]


def make_prompts(num: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Chats whose rendered prompts span roughly 20-400 tokens (deterministic)."""
    rng = random.Random(seed)
    chats = []
    for _ in range(num):
        words = rng.randint(2, 330)
        body = " ".join(rng.choice(WORDS) for _ in range(words))
        chats.append([{"role": "user", "content": f"Summarize: {body}"}])
    return chats


def run_shoal(args: argparse.Namespace) -> dict:
    from shoal.engine import LLM, SamplingParams

    llm = LLM(
        MODEL,
        num_threads=args.threads,
        max_num_batched_tokens=args.budget,
        max_num_seqs=256,
        kv_cache_memory_gb=args.kv_gb,
    )
    chats = make_prompts(args.num_prompts)
    ids = [llm.tokenizer.encode_chat(c) for c in chats]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    llm.generate(prompt_token_ids=ids[:2], params=SamplingParams(temperature=0, max_tokens=2))  # warm-up
    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    results = llm.generate(prompt_token_ids=ids, params=params)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    out = {
        "name": "shoal",
        "elapsed_s": elapsed,
        "output_tokens": sum(len(r.token_ids) for r in results),
        "prompt_tokens": sum(len(i) for i in ids),
        "first_tokens": [list(r.token_ids[:8]) for r in results[:4]],
        "preemptions": llm.engine.stats().num_preemptions,
    }
    if profiler:
        out["profile"] = _profile_summary(profiler, elapsed)
    return out


def run_hf(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shoal.engine.bundled import bundled_model_path

    torch.set_num_threads(args.threads)
    path = bundled_model_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    chats = make_prompts(args.num_prompts)
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    output_tokens = 0
    prompt_tokens = 0
    first: list[list[int]] = []
    with torch.inference_mode():
        warm = tok(texts[:2], return_tensors="pt", padding=True, add_special_tokens=False)
        model.generate(**warm, max_new_tokens=2, do_sample=False)
        start = time.perf_counter()
        for i in range(0, len(texts), args.batch):
            enc = tok(texts[i : i + args.batch], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(
                **enc,
                max_new_tokens=args.max_tokens,
                min_new_tokens=args.max_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            output_tokens += new.numel()
            prompt_tokens += enc["input_ids"].numel()  # padded: what transformers computes
            if not first:
                first = [row[:8].tolist() for row in new[:4]]
        elapsed = time.perf_counter() - start
    return {
        "name": f"transformers-b{args.batch}",
        "elapsed_s": elapsed,
        "output_tokens": output_tokens,
        "prompt_tokens": prompt_tokens,
        "first_tokens": first,
    }


def _profile_summary(profiler: cProfile.Profile, elapsed: float) -> list[tuple[str, float]]:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    # (function names, count their callees too): leaf ops by own time, composite steps by cumulative time
    buckets: dict[str, tuple[tuple[str, ...], bool]] = {
        "linear (matmuls, lm_head included)": (("linear",), False),
        "paged attention (torch)": (("paged_attention",), True),
        "rms norm / rotary / activation": (("rms_norm", "rotary", "silu_and_mul", "_rotate"), False),
        "kv write": (("store_kv",), True),
        "logits (lm_head)": (("compute_logits",), True),
        "sampler": (("sample",), True),
        "scheduler + block manager": (("schedule", "postprocess", "append_token"), True),
    }
    totals = dict.fromkeys(buckets, 0.0)
    for (_file, _line, func), (_cc, _nc, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = func.removeprefix("<built-in method torch._C._nn.").removesuffix(">")
        for bucket, (names, cumulative) in buckets.items():
            if name in names:
                totals[bucket] += cumtime if cumulative else tottime
    return [(k, v / elapsed * 100) for k, v in totals.items()]


def run_worker(kind: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--batch", str(args.batch), "--num-prompts", str(args.num_prompts),
           "--max-tokens", str(args.max_tokens), "--threads", str(args.threads), "--budget", str(args.budget), "--kv-gb", str(args.kv_gb)]
    if args.profile:
        cmd.append("--profile")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batches", default="16,64", help="transformers batch sizes to compare against")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--budget", type=int, default=2048, help="Shoal's max_num_batched_tokens")
    parser.add_argument("--kv-gb", type=float, default=2.0, help="Shoal's KV pool (2 GB holds all 64 sequences)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (8 prompts, 16 tokens)")
    parser.add_argument("--output", default=str(RESULTS / "offline-cpu.md"))
    parser.add_argument("--worker", choices=["shoal", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = run_shoal(args) if args.worker == "shoal" else run_hf(args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    if args.quick:
        args.num_prompts, args.max_tokens, args.batches = 8, 16, "4,8"
        args.output = str(RESULTS / "offline-cpu-quick.md")

    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows = []
    with console.status("running Shoal...") as status:
        args.profile = True
        rows.append(run_worker("shoal", args))
        args.profile = False
        for batch in [int(b) for b in args.batches.split(",")]:
            status.update(f"running transformers batch {batch}...")
            args.batch = batch
            rows.append(run_worker("hf", args))
    for row in rows:
        row["tok_s"] = row["output_tokens"] / row["elapsed_s"]
    best_hf = max((r for r in rows if r["name"] != "shoal"), key=lambda r: r["tok_s"])
    shoal = rows[0]
    ratio = shoal["tok_s"] / best_hf["tok_s"]
    same_tokens = shoal["first_tokens"] == best_hf["first_tokens"]

    table = Table(title=f"Offline throughput, bundled SmolLM2-135M, {args.num_prompts} prompts x {args.max_tokens} tokens")
    for col in ("config", "output tok/s", "elapsed s", "prompt tokens computed", "peak RSS MB", "vs best transformers"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(row["name"], f"{row['tok_s']:.1f}", f"{row['elapsed_s']:.1f}", str(row["prompt_tokens"]),
                      f"{row['peak_rss_mb']:.0f}", f"{row['tok_s'] / best_hf['tok_s']:.2f}x")
    console.print(table)
    console.print(f"Shoal / best transformers ({best_hf['name']}): [bold]{ratio:.2f}x[/bold]; "
                  f"first tokens identical: {same_tokens}; Shoal preemptions: {shoal.get('preemptions')}")

    lines = [
        "# Offline throughput (CPU)",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- command: `python bench/offline.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"- workload: {args.num_prompts} chat prompts (20-400 prompt tokens), {args.max_tokens} greedy output tokens each, fp32, {args.threads} threads",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        "| config | output tok/s | elapsed s | prompt tokens computed | peak RSS MB | vs best transformers |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['name']} | {row['tok_s']:.1f} | {row['elapsed_s']:.1f} | {row['prompt_tokens']} | "
                     f"{row['peak_rss_mb']:.0f} | {row['tok_s'] / best_hf['tok_s']:.2f}x |")
    lines += ["", f"**Shoal / best transformers ({best_hf['name']}): {ratio:.2f}x** (first 8 tokens of 4 prompts identical: {same_tokens}; Shoal preemptions: {shoal.get('preemptions')})", "",
              "## Where Shoal's time goes (cProfile, share of wall time)", "", "| part | % |", "|---|---:|"]
    for part, share in shoal.get("profile", []):
        lines.append(f"| {part} | {share:.1f} |")
    padded = best_hf["prompt_tokens"] / max(1, shoal["prompt_tokens"])
    lines += [
        "",
        "## Reading the figures",
        "",
        f"- Both sides are compute-bound fp32 matmuls on the same 2 cores. Shoal computes each prompt token once "
        f"(no padding, continuous batching, prefix cache); {best_hf['name']} computes {padded:.2f}x as many prompt "
        "tokens because left padding stretches every prompt of a batch to the longest one. That FLOP saving is "
        "most of Shoal's lead.",
        "- Decode attention on the CPU path is the torch reference kernel: it gathers each sequence's KV blocks "
        "(head-major, so the gather yields the [Hk, L, D] slabs SDPA reads directly) into a workspace and runs "
        "one batched SDPA per layer, so the KV cache is still read twice per layer (the Triton kernel on GPU "
        "reads the blocks in place). transformers' contiguous cache pays a similar copy (`torch.cat` every "
        "step).",
        "- The 2x target is not reached on this machine; closing the gap needs an attention path that reads the "
        "paged cache in place on CPU (a compiled CPU kernel) and cheaper matmuls, not scheduling work: "
        "scheduler, block manager and sampler together stay under 1% of the wall time.",
    ]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    console.print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
