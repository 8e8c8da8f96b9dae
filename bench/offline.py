"""Offline throughput: Shoal's engine vs transformers' batched generate on the bundled model.

64 deterministic chat prompts (20-400 prompt tokens), 128 greedy output tokens each, plus two
interactive rows: batch 1 (the first 8 prompts one after another) and decode-only (a short prompt,
256 tokens). Shoal runs with its default settings (weights computed from the GGUF's Q4_1 blocks);
its fp32 path (``weights=dequantized``) runs the batch-1 row too, for the speed-up and the greedy
agreement of the two. The 64-prompt batch also runs with ``batch_matmul=bfloat16`` (its GEMMs in
bf16), and transformers runs it in fp32 and in bf16 (the target row compares fp32 with fp32). Each
configuration runs in its own process so its peak RSS is its own. Writes
``bench/results/offline-cpu.md`` (machine, command, defaults chosen, figures, profiles).

    python bench/offline.py                 # the full benchmark (~12 min on 2 cores)
    python bench/offline.py --only batch    # the batch rows only (--only interactive: the others)
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

    # Default engine settings (sized from the machine); --variant: a batch_matmul other than the default.
    llm = LLM(MODEL, weights=args.weights, **({} if args.variant == "default" else {"batch_matmul": args.variant}))
    chats = make_prompts(args.num_prompts)
    ids = [llm.tokenizer.encode_chat(c) for c in chats]
    # Warm-up on a prompt outside the workload (a workload prompt would then hit the prefix cache).
    llm.generate([{"role": "user", "content": "Warm up."}], SamplingParams(temperature=0, max_tokens=2))
    groups = _shoal_groups(args, ids, llm.tokenizer.encode_chat([{"role": "user", "content": "Hi"}]))
    profiler = cProfile.Profile() if args.profile else None
    results = []
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    for group, max_tokens in groups:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        results += llm.generate(prompt_token_ids=group, params=params)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - start
    engine = llm.engine
    out = {
        "name": f"shoal-{args.mode}" + "".join(f"-{v}" for v in (args.weights, args.variant) if v not in ("auto", "default")),
        "elapsed_s": elapsed,
        "output_tokens": sum(len(r.token_ids) for r in results),
        "prompt_tokens": sum(len(g) for group, _ in groups for g in group),
        "first_tokens": [list(r.token_ids[:8]) for r in results[:4]],
        "token_ids": [list(r.token_ids) for r in results],
        "preemptions": engine.stats().num_preemptions,
        "defaults": {
            "weights": "native" if engine.runner.model.model.layers[0].mlp.down_proj.quantized is not None else "fp32",
            "batch_matmul": engine.config.batch_matmul,
            "batch_gemm": str(engine.runner.model.batch_gemm).removeprefix("torch."),
            "kv_pool_blocks": engine.num_blocks,
            "kv_pool_tokens": engine.num_blocks * engine.block_size,
            "max_num_batched_tokens": engine.scheduler.config.max_num_batched_tokens,
            "max_num_seqs": engine.scheduler.config.max_num_seqs,
            "threads": torch_threads(),
        },
    }
    if profiler:
        out["profile"] = _profile_summary(profiler, elapsed)
    return out


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _shoal_groups(args: argparse.Namespace, ids: list[list[int]], short: list[int]) -> list[tuple[list[list[int]], int]]:
    """(prompts submitted together, max tokens) in the order they run."""
    if args.mode in ("batch", "batch-profile"):  # batch-profile: the batch again under cProfile, for its breakdown
        return [(ids, args.max_tokens)]
    if args.mode in ("single", "profile"):  # profile: a cProfile'd batch-1 run of 2 prompts, for its breakdown
        return [([p], args.max_tokens) for p in ids[: args.single_prompts if args.mode == "single" else 2]]
    return [([short], args.decode_tokens)]


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
    dtype = torch.bfloat16 if args.variant == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
    chats = make_prompts(args.num_prompts)
    max_tokens, batch = args.max_tokens, args.batch
    if args.mode == "single":
        chats, batch = chats[: args.single_prompts], 1
    elif args.mode == "decode":
        chats, batch, max_tokens = [[{"role": "user", "content": "Hi"}]], 1, args.decode_tokens
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    output_tokens = 0
    prompt_tokens = 0
    first: list[list[int]] = []
    with torch.inference_mode():
        warm = tok(texts[:2], return_tensors="pt", padding=True, add_special_tokens=False)
        model.generate(**warm, max_new_tokens=2, do_sample=False)
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            enc = tok(texts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(
                **enc,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
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
        "name": {"batch": f"transformers-b{batch}", "single": "transformers-single", "decode": "transformers-decode"}[args.mode]
        + ("-bf16" if dtype == torch.bfloat16 else ""),
        "elapsed_s": elapsed,
        "output_tokens": output_tokens,
        "prompt_tokens": prompt_tokens,
        "first_tokens": first,
    }


def _profile_summary(profiler: cProfile.Profile, elapsed: float) -> list[tuple[str, float]]:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    # (function names, count their callees too): leaf ops by own time, composite steps by cumulative time
    buckets: dict[str, tuple[tuple[str, ...], bool]] = {
        "torch linear (fp32 MKL; dequantized path)": (("linear",), False),
        "oneDNN GEMMs on packed weights past 48 rows (lm_head too)": (("packed_linear",), True),
        "quantized GEMV kernel (Q4_1 layers, Q8_0 lm_head)": (("q4_1_linear", "q8_0_linear"), False),
        "dequantize for large batches": (("q4_1_dequantize", "q8_0_dequantize"), False),
        "paged attention (C++ kernel on CPU fp32, else torch)": (("paged_attention",), True),
        "rms norm / rotary / activation": (("rms_norm", "rotary", "silu_and_mul", "_rotate"), False),
        "kv write": (("store_kv",), True),
        "logits (lm_head)": (("compute_logits",), True),
        "sampler": (("sample",), True),
        "scheduler + block manager": (("schedule", "postprocess", "append_token"), True),
    }
    totals = dict.fromkeys(buckets, 0.0)
    for (_file, _line, func), (_cc, _nc, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = func.removesuffix(">").rpartition(".")[2] if func.startswith("<built-in") else func
        for bucket, (names, cumulative) in buckets.items():
            if name in names:
                totals[bucket] += cumtime if cumulative else tottime
    return [(k, v / elapsed * 100) for k, v in totals.items()]


def run_worker(kind: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--batch", str(args.batch), "--num-prompts", str(args.num_prompts),
           "--max-tokens", str(args.max_tokens), "--threads", str(args.threads), "--mode", args.mode,
           "--weights", args.weights, "--variant", args.variant, "--single-prompts", str(args.single_prompts),
           "--decode-tokens", str(args.decode_tokens)]
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
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="transformers' torch threads")
    parser.add_argument("--single-prompts", type=int, default=8, help="prompts of the batch-1 row")
    parser.add_argument("--decode-tokens", type=int, default=256, help="tokens of the decode-only row")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the plan this many times, alternating engines; each row keeps its fastest run")
    parser.add_argument("--only", choices=["all", "interactive", "batch"], default="all",
                        help="interactive: only the batch-1 and decode-only rows; batch: only the batch rows")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (8 prompts, 16 tokens)")
    parser.add_argument("--output", default=str(RESULTS / "offline-cpu.md"))
    parser.add_argument("--worker", choices=["shoal", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["batch", "batch-profile", "single", "decode", "profile"], default="batch", help=argparse.SUPPRESS)
    parser.add_argument("--weights", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", help=argparse.SUPPRESS)  # shoal: batch_matmul; hf: dtype
    parser.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = run_shoal(args) if args.worker == "shoal" else run_hf(args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0

    if args.only != "all" and args.output == str(RESULTS / "offline-cpu.md"):
        args.output = str(RESULTS / f"offline-cpu-{args.only}.md")
    if args.quick:
        args.num_prompts, args.max_tokens, args.batches = 8, 16, "4,8"
        args.single_prompts, args.decode_tokens = 2, 32
        args.output = str(RESULTS / "offline-cpu-quick.md")

    from rich.console import Console

    console = Console()
    plan: list[tuple[str, str, str, str, int, bool]] = [  # (worker, mode, weights, variant, batch, profile)
        ("shoal", "single", "auto", "default", 1, False),
        ("shoal", "profile", "auto", "default", 1, True),
        ("shoal", "single", "dequantized", "default", 1, False),
        ("hf", "single", "auto", "default", 1, False),
        ("shoal", "decode", "auto", "default", 1, False),
        ("hf", "decode", "auto", "default", 1, False),
        ("shoal", "batch", "auto", "default", 1, False),
        ("shoal", "batch-profile", "auto", "default", 1, True),
        ("shoal", "batch", "auto", "bfloat16", 1, False),
        ("shoal", "batch", "dequantized", "default", 1, False),
        *[("hf", "batch", "auto", dtype, int(b), False) for b in args.batches.split(",") for dtype in ("default", "bfloat16")],
    ]
    if args.only != "all":
        plan = [p for p in plan if p[1].startswith("batch") == (args.only == "batch")]
    rows: dict[str, dict] = {}
    with console.status("benchmarking...") as status:
        for round_index in range(args.repeats):
            for worker, mode, weights, variant, batch, profile in plan:
                if round_index and (profile or (mode == "batch" and weights == "dequantized")):
                    continue  # breakdowns and the batch's agreement reference: one run is enough
                status.update(f"running {worker} {mode} {weights} {variant} b{batch}...")
                args.mode, args.weights, args.variant, args.batch, args.profile = mode, weights, variant, batch, profile
                row = run_worker(worker, args)
                row["tok_s"] = row["output_tokens"] / row["elapsed_s"]
                console.print(f"{row['name']}: {row['tok_s']:.1f} tok/s")
                if row["name"] not in rows or row["tok_s"] > rows[row["name"]]["tok_s"]:
                    rows[row["name"]] = row
    lines = report(args, rows)
    console.print("\n".join(lines))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines) + "\n")
    console.print(f"wrote {args.output}")
    return 0


def _prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def report(args: argparse.Namespace, rows: dict[str, dict]) -> list[str]:
    single, single_fp32 = rows.get("shoal-single"), rows.get("shoal-single-dequantized")
    hf_batches = [r for name, r in rows.items() if name.startswith("transformers-b")]
    hf_fp32 = [r for r in hf_batches if not r["name"].endswith("-bf16")]
    hf_bf16 = [r for r in hf_batches if r["name"].endswith("-bf16")]
    best_hf_fp32 = max(hf_fp32, key=lambda r: r["tok_s"]) if hf_fp32 else None
    best_hf_bf16 = max(hf_bf16, key=lambda r: r["tok_s"]) if hf_bf16 else None
    batch = rows.get("shoal-batch")
    comparisons = []
    if single is not None:
        comparisons += [
            (f"batch 1 (first {args.single_prompts} prompts one after another)", single, rows["transformers-single"]),
            (f"decode-only (short prompt, {args.decode_tokens} tokens)", rows["shoal-decode"], rows["transformers-decode"]),
        ]
    # the target compares like with like: transformers on the same fp32 weights (Shoal's default computes
    # in fp32 too); the bf16 rows round weights and activations, shown beside it
    if batch is not None and best_hf_fp32 is not None:
        comparisons.append((f"{args.num_prompts}-prompt batch vs best transformers fp32 batch ({best_hf_fp32['name']}; "
                            "same weights and precision: the target row)", batch, best_hf_fp32))  # fmt: skip
    if batch is not None and best_hf_bf16 is not None:
        comparisons.append((f"{args.num_prompts}-prompt batch vs best transformers bf16 batch ({best_hf_bf16['name']}; "
                            "weights and activations rounded to bf16)", batch, best_hf_bf16))  # fmt: skip
        if "shoal-batch-bfloat16" in rows:
            comparisons.append((f"{args.num_prompts}-prompt batch, batch_matmul=bfloat16, vs {best_hf_bf16['name']}",
                                rows["shoal-batch-bfloat16"], best_hf_bf16))  # fmt: skip
    lines = [
        "# Offline throughput and latency (CPU)",
        "",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        "other processes shared the cores, so absolute figures are noisy: the ratios were measured side by side",
        f"- command: `python bench/offline.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"- workload: {args.num_prompts} chat prompts (20-400 prompt tokens), {args.max_tokens} greedy output tokens "
        f"each; transformers fp32 (and bf16 for the batch: -bf16 rows) with {args.threads} threads on the same GGUF",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} "
        "(both engines; `python -m shoal.engine` sets PASSIVE)",
        f"- Shoal defaults chosen (no tuning flags): {json.dumps((batch or single or {}).get('defaults'))}",
        f"- each row is the fastest of {args.repeats} run(s), but the profiled rows and shoal-batch-dequantized "
        "(the batch's agreement reference) run in the first round only; the engines alternate within a round",
        "",
        "| row | Shoal tok/s | transformers tok/s | Shoal / transformers |",
        "|---|---:|---:|---:|",
    ]
    for label, ours, theirs in comparisons:
        lines.append(f"| {label} | {ours['tok_s']:.1f} | {theirs['tok_s']:.1f} | **{ours['tok_s'] / theirs['tok_s']:.2f}x** |")
    lines += [
        "",
        "| config | output tok/s | elapsed s | prompt tokens computed | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['tok_s']:.1f} | {row['elapsed_s']:.1f} | {row['prompt_tokens']} | {row['peak_rss_mb']:.0f} |")
    lines.append("")
    if single is not None and single_fp32 is not None:
        agreement = [_prefix(a, b) for a, b in zip(single["token_ids"], single_fp32["token_ids"], strict=True)]
        lines.append(
            f"- Quantized (native Q4_1/Q8_0) vs fp32 weights at batch 1: {single['tok_s'] / single_fp32['tok_s']:.2f}x; "
            f"greedy prefix agreement per prompt (of {args.max_tokens} tokens): {agreement}"
        )
    reference = rows.get("shoal-batch-dequantized")
    for name in ("shoal-batch", "shoal-batch-bfloat16"):
        if name in rows and reference is not None:
            prefixes = sorted(_prefix(a, b) for a, b in zip(rows[name]["token_ids"], reference["token_ids"], strict=True))
            lines.append(
                f"- {name} vs shoal-batch-dequantized (fp32 weights, torch linear), greedy prefix agreement over the "
                f"{len(prefixes)} prompts (of {args.max_tokens} tokens): all {args.max_tokens} on "
                f"{sum(p == args.max_tokens for p in prefixes)}, median {prefixes[len(prefixes) // 2]}, min {prefixes[0]}"
            )
    if batch is not None and best_hf_fp32 is not None:
        lines.append(
            f"- first 8 tokens of 4 prompts identical to {best_hf_fp32['name']}: "
            f"{batch['first_tokens'] == best_hf_fp32['first_tokens']}; Shoal preemptions in the batch: {batch.get('preemptions')}"
        )
    profiles = []
    if "shoal-profile" in rows:
        profiles.append(("batch 1 (2 prompts, profiled apart)", rows["shoal-profile"]))
    if "shoal-batch-profile" in rows:
        profiles.append((f"the {args.num_prompts}-prompt batch (profiled apart)", rows["shoal-batch-profile"]))
    for label, row in profiles:
        lines += ["", f"## Where Shoal's time goes at {label} (cProfile, share of wall time)", "", "| part | % |", "|---|---:|"]
        for part, share in row.get("profile", []):
            lines.append(f"| {part} | {share:.1f} |")
    return lines

if __name__ == "__main__":
    sys.exit(main())
