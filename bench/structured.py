"""Structured outputs: decode speed with and without a grammar, and grammar compile times.

Decode tok/s on the bundled model with default engine settings, at batch 1 and 64, free
and constrained side by side in one run (alternating repetitions, median of each side),
so noise from other work on the machine hits both. Both sides decode exactly
``--tokens`` tokens per sequence after the prompt: the free side ignores EOS, the
constrained side uses a JSON schema (a long array of small integers) that cannot close
sooner, so both finish by length. Timing starts once every sequence has its first token
(prefill excluded). Compile times: every schema of the test set plus the tool-call
grammars, cold (a fresh compiler, tokenizer already built) and cached.

    python bench/structured.py              # full run; writes bench/results/structured.md
    python bench/structured.py --quick      # smoke run (batch 1 and 4, 8 tokens): structured-quick.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "engine" / "structured"))
from structured_schemas import ALL  # the test set (>= 20 schemas)  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MODEL = "bundled:smollm2-135m-instruct"
LONG_ARRAY = {"type": "object", "properties": {"values": {"type": "array", "items": {"type": "integer", "minimum": 0,
              "maximum": 999}, "minItems": 4096}}, "required": ["values"]}  # fmt: skip
PROMPT = 'List many random integers between 0 and 999 as JSON: {"values": [...]}'


def decode_rate(
    engine: Any, prompt_ids: list[int], batch: int, tokens: int, constrained: bool, seed: int, temperature: float
) -> float:
    """Decode tokens/s for ``batch`` sequences of ``tokens`` tokens (the prefill step excluded)."""
    from shoal.engine import SamplingParams
    from shoal.engine.sampling_params import StructuredOutput

    spec = StructuredOutput("json_schema", json.dumps(LONG_ARRAY)) if constrained else None
    params = SamplingParams(
        temperature=temperature, max_tokens=tokens, seed=seed, ignore_eos=not constrained, structured=spec
    )
    for i in range(batch):
        engine.add_request(f"{seed}-{i}", None, params, prompt_token_ids=prompt_ids)
    produced: dict[str, int] = {}
    while len(produced) < batch or min(produced.values()) < 1:
        for out in engine.step():
            produced[out.request_id] = len(out.outputs[0].token_ids)
    start_tokens = sum(produced.values())
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        for out in engine.step():
            produced[out.request_id] = len(out.outputs[0].token_ids)
    elapsed = time.perf_counter() - start
    return (sum(produced.values()) - start_tokens) / elapsed


def compile_times(tokenizer: Any, vocab: int, eos: frozenset[int], rounds: int) -> dict[str, list[float]]:
    from shoal.engine.sampling_params import StructuredOutput
    from shoal.engine.server.tool_call_grammar import forced_tool_calls
    from shoal.engine.structured import GrammarCompiler

    specs = [StructuredOutput("json_schema", json.dumps(s)) for s in ALL.values()]
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": s}} for i, s in enumerate(ALL.values())
             if s.get("type") == "object"]  # fmt: skip
    specs += [forced_tool_calls(tools, True), forced_tool_calls(tools[:1], False)]
    times: dict[str, list[float]] = {"cold": [], "cached": []}
    shared = GrammarCompiler(tokenizer, vocab, eos)
    _ = shared.ll_tokenizer
    for _round in range(rounds):
        compiler = GrammarCompiler(tokenizer, vocab, eos)
        compiler._ll_tokenizer = shared.ll_tokenizer  # cold grammar, warm tokenizer (built once per engine)
        for spec in specs:
            for kind in ("cold", "cached"):
                t0 = time.perf_counter()
                compiler.compile(spec)
                times[kind].append(time.perf_counter() - t0)
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument(
        "--out", default=None, help="default: bench/results/structured.md (structured-quick.md with --quick)"
    )
    args = ap.parse_args()
    batches = [1, 4] if args.quick else [1, 64]
    tokens = 8 if args.quick else args.tokens
    reps = 1 if args.quick else args.reps
    out_path = Path(args.out or RESULTS / ("structured-quick.md" if args.quick else "structured.md"))

    from shoal.engine import LLM

    llm = LLM(MODEL)
    engine = llm.engine
    prompt_ids = engine.tokenizer.encode_chat([{"role": "user", "content": PROMPT}])
    decode_rate(engine, prompt_ids, 2, 4, True, 999, 1.0)  # warm-up both paths
    decode_rate(engine, prompt_ids, 2, 4, False, 998, 1.0)
    rows = []
    for temperature in (1.0, 0.0):
        for batch in batches:
            rates: dict[bool, list[float]] = {False: [], True: []}
            for rep in range(reps):
                for constrained in (False, True):
                    seed = rep * 2 + constrained
                    rates[constrained].append(
                        decode_rate(engine, prompt_ids, batch, tokens, constrained, seed, temperature)
                    )
            free, cons = statistics.median(rates[False]), statistics.median(rates[True])
            rows.append((temperature, batch, free, cons, cons / free))
            print(f"T={temperature} batch {batch}: free {free:.1f}, constrained {cons:.1f} tok/s, {cons / free:.3f}")
    vocab = engine.runner.model_config.vocab_size
    t0 = time.perf_counter()
    from shoal.engine.structured import GrammarCompiler

    _ = GrammarCompiler(engine.tokenizer, vocab, engine.eos_token_ids).ll_tokenizer
    tokenizer_s = time.perf_counter() - t0
    times = compile_times(engine.tokenizer, vocab, engine.eos_token_ids, 2 if args.quick else 10)
    device = engine.runner.device
    cmd = "python bench/structured.py" + (" --quick" if args.quick else "")
    lines = [
        "# Structured outputs: decode speed and grammar compile time",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; device: {device}",
        f"- command: `{cmd}`",
        f"- model: {MODEL}, default engine settings; {tokens} decode tokens per sequence, "
        f"median of {reps} alternating repetitions per side",
        f"- constrained side: JSON schema `{json.dumps(LONG_ARRAY)}` (cannot close before max_tokens)",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        "| temperature | batch | free tok/s | constrained tok/s | constrained / free |",
        "|---:|---:|---:|---:|---:|",
        *[f"| {t} | {b} | {f:.1f} | {c:.1f} | {r:.3f} |" for t, b, f, c, r in rows],
        "",
        f"Grammar compile over {len(times['cold']) // (2 if args.quick else 10)} grammars ({len(ALL)} schemas of the "
        f"test set + 2 tool-call grammars), {2 if args.quick else 10} rounds; the llguidance tokenizer is built once "
        f"per engine ({tokenizer_s * 1000:.0f} ms here) and excluded:",
        "",
        "| | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|",
        *[
            f"| {kind} | {pct(v, 0.5) * 1000:.3f} | {pct(v, 0.99) * 1000:.3f} | {max(v) * 1000:.3f} |"
            for kind, v in times.items()
        ],
        "",
    ]
    out_path.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
